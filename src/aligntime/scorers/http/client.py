"""The HTTP round trip of the served scorers: bounded batches, retries, failures as errors.

Requests go through the same client and retry rules as the ``openai`` generator
(:mod:`aligntime.generators.http_retry`): 408, 409, 429 and 5xx replies, timeouts and
dropped connections are retried with backoff (a server's Retry-After honoured); other
4xx replies and malformed replies are not. Every failure is a
:class:`~aligntime.errors.ScorerError` naming the scorer, so the aligner treats it as
any scorer failure: with a gate, the request fails closed.

Texts are sent ``batch_size`` at a time (one request per batch, at most
``concurrency`` in flight), so 64 candidates with the default bound are one request,
not 64.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any, Literal, TypeVar, cast

import httpx2
import openai
from pydantic import BaseModel, ConfigDict, Field

from aligntime.errors import ConfigError, ScorerError
from aligntime.generators.http_retry import (
    BaseURL,
    HTTPFailure,
    RetriesExhausted,
    RetryPolicy,
    make_client,
    post_json,
)
from aligntime.many import run_many

Server = Literal["vllm", "tei"]
T = TypeVar("T")
R = TypeVar("R")


class ServedOptions(BaseModel):
    """Options every served scorer takes: where the server is, batching and retries."""

    model_config = ConfigDict(extra="forbid")

    server: Server
    """``vllm`` (``vllm serve`` with a pooling model) or ``tei`` (text-embeddings-inference)."""
    base_url: BaseURL
    """The server's root, e.g. http://localhost:8000 (the endpoints hang off it, not /v1)."""
    model: str | None = None
    """The served model's name; vLLM needs it, TEI serves one model and ignores it."""
    endpoint: str | None = None
    """Which of the server's endpoints to call (see the kind); default: the kind's first."""
    batch_size: int = Field(32, ge=1, le=4096)
    """Texts (or pairs) per request."""
    concurrency: int = Field(4, ge=1, le=256)
    """Requests in flight at once for one scoring call."""
    api_key_env: str | None = None
    """Environment variable holding a key, sent as ``Authorization: Bearer``."""
    timeout_s: float = Field(60.0, gt=0.0)
    """Most seconds one attempt may take, the whole reply included."""
    connect_timeout_s: float = Field(10.0, gt=0.0)
    max_retries: int = Field(3, ge=0, le=20)
    backoff_s: float = Field(0.5, ge=0.0)
    max_backoff_s: float = Field(30.0, ge=0.0)
    truncate: bool = True
    """Ask the server to cut over-long inputs (TEI ``truncate``) instead of failing them."""
    max_request_chars: int = Field(2000, ge=20)
    """Characters of the user's turns sent as the request (the oldest are cut)."""


class ServedClient:
    """Posts one scorer's batches to its server."""

    def __init__(self, options: ServedOptions, *, scorer: str, endpoint: str) -> None:
        self.options = options
        self.scorer = scorer
        self.endpoint = endpoint
        self.url = f"{options.base_url}{endpoint}"
        self.retry = RetryPolicy(
            options.max_retries, options.backoff_s, options.max_backoff_s, options.timeout_s
        )
        self.headers = {"Content-Type": "application/json", **_auth(options)}

    async def map_batches(
        self,
        items: Sequence[T],
        body: Callable[[list[T]], dict[str, Any]],
        parse: Callable[[Any, int], list[R]],
    ) -> list[R]:
        """``parse(reply, count)`` of ``body(batch)`` for each batch of ``items``, in order.

        One client per call: its connections belong to the calling event loop, and a
        scorer is called from several (the CLI's, the server's, a Ray actor's).
        """
        o = self.options
        batches = [list(items[i : i + o.batch_size]) for i in range(0, len(items), o.batch_size)]
        client = make_client(
            o.base_url,
            self.retry,
            connect_timeout_s=o.connect_timeout_s,
            max_connections=o.concurrency,
        )

        async def one(batch: list[T]) -> list[R]:
            reply = await self._post(client, body(batch))
            try:
                values = parse(reply, len(batch))
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                raise self._error(f"malformed reply from {self.url}: {exc}") from exc
            if len(values) != len(batch):
                raise self._error(f"{self.url} returned {len(values)} results for {len(batch)}")
            return values

        try:
            parts = await run_many(one, batches, concurrency=o.concurrency, description=self.url)
        finally:
            await client.close()
        return [v for part in parts for v in part]

    async def _post(self, client: openai.AsyncOpenAI, body: dict[str, Any]) -> Any:
        try:
            reply = await post_json(post_client(client), self.url, body, self.headers, self.retry)
        except RetriesExhausted as exc:
            raise self._error(
                f"{self.url} failed after {exc.attempts} attempts: {exc.last.message}",
                hint="check that the server is running and reachable; raise max_retries or "
                "timeout_s for a slow or busy server",
            ) from exc
        except HTTPFailure as exc:
            hint = "check base_url, endpoint and model" if exc.status in (404, 405) else None
            raise self._error(f"{self.url} rejected the request: {exc.message}", hint=hint) from exc
        return reply.get(_LIST_KEY, reply)

    def _error(self, message: str, *, hint: str | None = None) -> ScorerError:
        return ScorerError(self.scorer, message, hint=hint)


_LIST_KEY = "__aligntime_list__"


class _ListReplies:
    """The client, with a JSON-array reply handed on as an object.

    TEI answers ``/predict``, ``/rerank`` and ``/embed`` with a bare JSON array, while
    the shared ``post_json`` reads objects (an array from a chat server is garbage).
    Wrapping the array here keeps one retry path for every HTTP backend.
    """

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self.client = client

    async def post(self, path: str, **kwargs: Any) -> httpx2.Response:
        response = cast(httpx2.Response, await self.client.post(path, **kwargs))
        if response.content.lstrip()[:1] != b"[":
            return response
        wrapped = json.dumps({_LIST_KEY: json.loads(response.content)}).encode()
        return httpx2.Response(
            response.status_code,
            headers={"content-type": "application/json"},
            content=wrapped,
            request=response.request,
        )


def post_client(client: openai.AsyncOpenAI) -> openai.AsyncOpenAI:
    """``client`` as ``post_json`` takes it, with array replies wrapped (see _ListReplies)."""
    return cast(openai.AsyncOpenAI, _ListReplies(client))


def _auth(options: ServedOptions) -> dict[str, str]:
    env = options.api_key_env
    if not env:
        return {}
    key = os.environ.get(env)
    if not key:
        raise ConfigError(
            f"option api_key_env names {env!r}, which is not set in the environment",
            hint=f"export {env}=<your key>, or remove api_key_env for a server without keys",
        )
    return {"Authorization": f"Bearer {key}"}
