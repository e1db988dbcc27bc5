"""The ASGI application: routes, errors in the OpenAI shape, and the request guard.

The guard is plain ASGI middleware (cheaper than Starlette's ``BaseHTTPMiddleware``)
that, for every HTTP request, enforces the body size limit, checks the API key
and the rate limits on ``/v1/`` paths (per key, or per address without keys; and
failed keys per address), and times the request for ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aligntime import __version__
from aligntime.policy.loader import load_policy
from aligntime.policy.schema import Policy
from aligntime.server import ui
from aligntime.server.audit import AuditLog
from aligntime.server.config import ServerOptions
from aligntime.server.errors import ApiError, internal_error
from aligntime.server.metrics import Metrics
from aligntime.server.responses import new_id
from aligntime.server.routes import router
from aligntime.server.security import Authenticator, RateLimiter
from aligntime.server.service import AlignmentService, RequestContext, build_aligner

log = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"
_KNOWN_PATHS = {CHAT_PATH, "/v1/models", "/healthz", "/metrics"}
_MODEL_PATH = "/v1/models/"


def create_app(service: AlignmentService) -> FastAPI:
    """The FastAPI app serving ``service``'s policies."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Blocking engine and scorer calls run in threads (asyncio.to_thread); the
        # default pool (cores + 4) would cap concurrent llama.cpp requests far below
        # its parallel slots.
        loop = asyncio.get_running_loop()
        executor = ThreadPoolExecutor(service.options.worker_threads, "aligntime-worker")
        loop.set_default_executor(executor)
        yield
        # After uvicorn's drain: flush and close the audit log while the process is
        # still ours (a signal is re-raised once uvicorn returns, ending it at once).
        await asyncio.to_thread(service.close)

    app = FastAPI(
        title="aligntime",
        version=__version__,
        description="OpenAI-compatible chat completions whose answers pass through an "
        "inference-time aligner. Fields under `aligntime` are not in the OpenAI spec.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.include_router(router)
    app.include_router(ui.api_router)
    if service.options.ui:
        app.include_router(ui.pages_router)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(GuardMiddleware, service=service)
    return app


def error_response(exc: ApiError) -> Response:
    return Response(
        exc.json_bytes(), exc.status, headers=exc.headers, media_type="application/json"
    )


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [(_field_path(e.get("loc", ())), e) for e in exc.errors()]
    if not errors:
        return error_response(ApiError(400, "invalid request", code="invalid_value"))
    # A value that fits no member of a union (``stop``: a string or a list) fails once
    # per member; the member it was meant for is the one that did not fail on its type.
    param, first = min(
        errors, key=lambda pe: (str(pe[1].get("type", "")).endswith("_type"), -len(pe[0]))
    )
    field = ".".join(param) or None
    reason = str(first.get("msg"))
    if first.get("type") == "string_unicode":  # a lone surrogate, as the service words it
        reason = "the text holds a lone UTF-16 surrogate; send valid Unicode"
    if first.get("type") == "json_invalid":
        message, field = f"the body is not valid JSON: {reason}", None
    else:
        message = f"{field}: {reason}" if field else reason
    # Problems of the same field (other union members, its parts) are not more problems.
    others = {p for p, _ in errors if p[: len(param)] != param and param[: len(p)] != p}
    if others:
        message += f" (and {len(others)} more problem(s))"
    return error_response(ApiError(400, message, param=field, code="invalid_value"))


_TYPE_TAGS = {"str", "int", "float", "bool", "none", "dict", "list"}


def _field_path(loc: Sequence[int | str]) -> tuple[str, ...]:
    """The request field an error is about: ``loc`` without ``body`` and union member
    tags (``str``, ``list[TextPart]``, ``function-after[...]``)."""
    return tuple(
        str(part)
        for part in loc
        if part != "body"
        and not (isinstance(part, str) and (part in _TYPE_TAGS or "[" in part or "-" in part))
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return error_response(ApiError(exc.status_code, str(exc.detail), code=code))


async def _unexpected(request: Request, exc: Exception) -> Response:
    # A bug: log the type and traceback (never the request body), answer in OpenAI shape.
    log.error("unexpected %s while answering %s", type(exc).__name__, request.url.path,
              exc_info=exc)  # fmt: skip
    return error_response(internal_error())


class GuardMiddleware:
    """Body size limit, API keys, rate limit and timing, before any route runs."""

    def __init__(self, app: ASGIApp, service: AlignmentService) -> None:
        self.app = app
        self.service = service
        self.metrics = service.metrics
        options = service.options
        self.auth = Authenticator(options.all_keys(), options.anonymous_rights)
        self.limiter = RateLimiter(service.options.rate_limit)
        self.auth_failures = RateLimiter(service.options.rate_limit)
        self.max_body = service.options.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path: str = scope["path"]
        # The id every response carries as x-request-id; a chat completion's id and its
        # audit row's, so a client's report finds the row.
        rid = new_id()
        ctx = RequestContext(request_id=rid)
        scope["aligntime.ctx"] = ctx
        status = [500]
        request_id = (b"x-request-id", rid.encode())

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), request_id]}
            await send(message)

        chat = path == CHAT_PATH
        if chat:
            self.metrics.in_flight.inc()
        try:
            receive = await self._guard(scope, receive, ctx)
            await self.app(scope, receive, send_status)
        except ApiError as exc:
            await _send_error(send_status, exc)
        finally:
            if chat:
                self.metrics.in_flight.dec()
            endpoint = (
                path
                if path in _KNOWN_PATHS
                else "/v1/models/{model}"
                if path.startswith(_MODEL_PATH)
                else "other"
            )
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            if chat and ctx.align_s is not None and not ctx.streamed:
                total = time.perf_counter() - started
                self.metrics.total_s.observe(total)
                self.metrics.align_s.observe(ctx.align_s)
                self.metrics.overhead_s.observe(max(0.0, total - ctx.align_s))

    async def _guard(self, scope: Scope, receive: Receive, ctx: RequestContext) -> Receive:
        """Raise ApiError for an oversized body, a bad key or a spent rate limit."""
        length: int | None = None
        authorization: str | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    raise ApiError(400, "invalid Content-Length header") from None
            elif name == b"authorization":
                authorization = value.decode("latin-1")
        if length is not None and length > self.max_body:
            raise _too_large(self.max_body)
        if scope["path"].startswith("/v1/"):
            # The socket's peer, or the client a trusted proxy names (see runner.py).
            address = str((scope.get("client") or ("local", 0))[0])
            if self.auth.enabled:
                # Failed keys spend the address's bucket; once it is empty every
                # attempt gets 429, the right key too, so guessing learns nothing.
                self.auth_failures.ensure_left(address)
                try:
                    caller = self.auth.identify(authorization)
                except ApiError:
                    self.auth_failures.spend(address)
                    raise
            else:
                caller = self.auth.identify(None)
            ctx.key_id, ctx.rights = caller.key_id, caller.rights
            self.limiter.check(ctx.key_id or address)
        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            return await _buffer_body(receive, self.max_body)
        return receive


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"the request body is larger than {limit} bytes",
        code="request_too_large",
    )


async def _buffer_body(receive: Receive, limit: int) -> Receive:
    """Read a body without Content-Length (chunked) up to ``limit``, then replay it."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_error(send: Send, exc: ApiError) -> None:
    body = exc.json_bytes()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def app_from_policies(policies: Sequence[str | Path | Policy], options: ServerOptions) -> FastAPI:
    """Build the service and app for preset names, policy files or :class:`Policy` objects."""
    metrics = Metrics()
    loaded = [p if isinstance(p, Policy) else load_policy(p) for p in policies]
    aligners = [build_aligner(p, options, metrics) for p in loaded]
    audit = AuditLog(options.audit_db) if options.audit_db else None
    service = AlignmentService(aligners, options, metrics, audit)
    return create_app(service)
