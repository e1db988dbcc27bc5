"""Thin HTTP routes: parse, hand to the service, serialise."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from aligntime.server.errors import ApiError
from aligntime.server.metrics import CONTENT_TYPE
from aligntime.server.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
)
from aligntime.server.service import AlignmentService, RequestContext
from aligntime.server.text import json_bytes

router = APIRouter()

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request (the field is named)"},
    401: {"model": ErrorResponse, "description": "Missing or invalid API key"},
    404: {"model": ErrorResponse, "description": "Unknown model (policy)"},
    413: {"model": ErrorResponse, "description": "Request body too large"},
    429: {"model": ErrorResponse, "description": "Rate limit reached; see Retry-After"},
    503: {
        "model": ErrorResponse,
        "description": "Backend, scorer or audit log unavailable, or shutting down",
    },
    504: {"model": ErrorResponse, "description": "Request time-out"},
}


def _service(request: Request) -> AlignmentService:
    service: AlignmentService = request.app.state.service
    return service


def _context(request: Request) -> RequestContext:
    ctx = request.scope.get("aligntime.ctx")
    return ctx if isinstance(ctx, RequestContext) else RequestContext()


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={
        **_ERRORS,
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "The aligned answer; server-sent events when stream is true",
        },
    },
)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    """Answer with the aligned choice of the policy named by ``model``."""
    service = _service(request)
    ctx = _context(request)
    if body.stream:
        plan = service.plan(body, ctx)  # 4xx before the stream starts, as a real status
        ctx.streamed = True
        return StreamingResponse(
            service.stream(body, plan, ctx),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    watch = _DisconnectWatch(request)
    try:
        answer = await service.complete(body, ctx)
    except asyncio.CancelledError:
        if not watch.left:
            raise
        # The watch cancelled us: nobody is left to read the answer; the status is for the
        # logs and metrics (complete() has recorded the request as abandoned).
        uncancel = getattr(asyncio.current_task(), "uncancel", None)  # Python 3.11+
        if uncancel is not None:
            uncancel()
        return Response(status_code=499)
    finally:
        watch.stop()
    return Response(json_bytes(answer.model_dump()), media_type="application/json")


class _DisconnectWatch:
    """Cancels the current task (a plain request's handler) when its client disconnects,
    so its work stops (where the engine allows) and it is audited as abandoned.

    Starlette cancels a stream whose client left, but not a plain request's handler.
    The handler keeps running in its own task: the answer takes no extra trip through
    the event loop's queue, which at 64 clients costs milliseconds.
    """

    def __init__(self, request: Request) -> None:
        self.left = False
        self._handler = asyncio.current_task()
        self._task = asyncio.ensure_future(self._watch(request))

    async def _watch(self, request: Request) -> None:
        await _disconnected(request)
        self.left = True
        if self._handler is not None:
            self._handler.cancel()

    def stop(self) -> None:
        self._task.cancel()


async def _disconnected(request: Request) -> None:
    """Return when the client closes the connection (the body has been read by now)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@router.get("/v1/models", response_model=ModelList, responses={401: _ERRORS[401]})
async def list_models(request: Request) -> ModelList:
    """The policies this server serves; a request's ``model`` names one."""
    service = _service(request)
    return ModelList(
        data=[
            _card(name, s.created, s.policy.description)
            for name, s in sorted(service.served.items())
        ]
    )


def _card(name: str, created: int, description: str) -> ModelCard:
    return ModelCard(id=name, created=created, description=description)


@router.get(
    "/v1/models/{model}",
    response_model=ModelCard,
    responses={401: _ERRORS[401], 404: _ERRORS[404]},
)
async def retrieve_model(model: str, request: Request) -> ModelCard:
    """One served policy, as OpenAI's ``GET /v1/models/{model}``."""
    served = _service(request).served.get(model)
    if served is None:
        raise ApiError(
            404,
            f"the model {model!r} does not exist",
            param="model",
            code="model_not_found",
        )
    return _card(model, served.created, served.policy.description)


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Health, "description": "Draining, or the audit log is failing"}},
)
async def healthz(request: Request) -> Response:
    """Readiness: 200 while requests can be answered; 503 with the reason while they
    cannot (shutting down, or the audit log refuses writes, so answers are withheld)."""
    service = _service(request)
    problem = await service.health()
    status = "ok" if problem is None else "draining" if service.shutdown.draining else "unhealthy"
    body = Health(status=status, models=sorted(service.served), reason=problem)
    return Response(
        json_bytes(body.model_dump()), 200 if problem is None else 503,
        media_type="application/json",
    )  # fmt: skip


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics (text exposition format)."""
    return Response(_service(request).metrics.render(), media_type=CONTENT_TYPE)
