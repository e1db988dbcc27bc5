"""Any OpenAI-compatible chat-completions server: vLLM, SGLang, llama.cpp, Ollama, hosted APIs.

This backend is how aligntime scales past one machine: the candidates are
sampled wherever the user's serving engine runs.

N candidates: servers that honour the request's ``n`` (vLLM, SGLang, OpenAI)
sample them in one request from one shared prompt prefix. Others silently
return one choice or reject ``n``; then the N candidates are fanned out as
concurrent ``n=1`` requests (candidate i seeded with seed + i). With
``n_mode: auto`` this is detected on the first request with n > 1 and
remembered for the base URL and model (for the whole process).

Continuing partial answers (``extend``, which the search strategies
``early_rejection`` and ``guided`` need): the partial answer goes as a final
assistant message. With ``continuation: auto`` the first such request also
carries ``continue_final_message: true`` and ``add_generation_prompt: false``,
which vLLM, SGLang and TGI need and llama.cpp's server ignores (it continues a
final assistant message anyway); a server that refuses those fields is
remembered as one that cannot continue answers, as is one told
``continuation: off``. A server that accepts the fields but starts a new turn
instead cannot be told apart from one that continues: name the mode there.

What requests and replies look like is ``openai_chat``'s part: token counts are
exact where the reply allows, a marked estimate otherwise. This module sends
them: through the official ``openai`` client (its retries, Retry-After and
proxy handling), as ``http_retry`` describes, fanning out where needed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import weakref
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from aligntime.errors import BackendError, ConfigError
from aligntime.generators import openai_chat as chat
from aligntime.generators.base import Capabilities, Generator, PartialAnswers
from aligntime.generators.http_retry import (
    BaseURL,
    HTTPFailure,
    OpenAIClient,
    RetriesExhausted,
    RetryPolicy,
    make_client,
    post_json,
)
from aligntime.generators.options import SamplingOptions
from aligntime.types import Generation, GenerationParams, Message

log = logging.getLogger(__name__)

NMode = Literal["auto", "native", "fanout"]
Continuation = Literal["auto", "continue_final_message", "prefill", "off"]

# (base_url, model) -> whether the server honours n; shared by every generator in the
# process so a judge and a generator on the same server probe it once between them.
_native_n: dict[tuple[str, str], bool] = {}

# (base_url, model) -> whether the server continues a final assistant message, learnt as
# _native_n is.
_continues: dict[tuple[str, str], bool] = {}

# An error message that names the parameter n: "'n'", "`n`", "n must be 1", "Invalid n".
_MENTIONS_N = re.compile(r"(?<![\w-])['\"`]?n['\"`]?(?![\w-])")
# An error message that names a field of CONTINUE_FINAL_MESSAGE ("Unrecognized request
# argument supplied: continue_final_message").
_MENTIONS_CONTINUE = re.compile("|".join(chat.CONTINUE_FINAL_MESSAGE))


class OpenAIOptions(SamplingOptions):
    """Options of the ``openai`` backend."""

    base_url: BaseURL
    """Root of the server's OpenAI API, e.g. http://localhost:8000/v1."""
    model: str
    """The model name the server serves (its ``/v1/models`` id)."""
    api_key_env: str | None = "OPENAI_API_KEY"
    """Environment variable that holds the API key; unset (or null) sends no key."""
    timeout_s: float = Field(120.0, gt=0.0)
    """Most seconds one request attempt may take, the whole reply included."""
    connect_timeout_s: float = Field(10.0, gt=0.0)
    """Most seconds to open a connection to the server."""
    max_retries: int = Field(3, ge=0, le=20)
    """Retries of a request after a 429, a 5xx, a timeout or a lost connection."""
    backoff_s: float = Field(0.5, ge=0.0)
    """Wait before the first retry; doubles each retry, with jitter."""
    max_backoff_s: float = Field(30.0, ge=0.0)
    """Longest wait before one retry, a server's Retry-After included."""
    min_candidates: int = Field(1, ge=1)
    """Fail a request only when fewer candidates than this arrived (capped at its n)."""
    n_mode: NMode = "auto"
    """``native``: send n; ``fanout``: n concurrent n=1 requests; ``auto``: detect once."""
    concurrency: int = Field(8, ge=1, le=256)
    """Most requests in flight at once when fanning out."""
    logprobs: bool = True
    """Ask for per-token log-probabilities so candidate token counts are exact."""
    continuation: Continuation = "auto"
    """How to continue a partial answer (search strategies): ``continue_final_message``
    (vLLM, SGLang, TGI), ``prefill`` (a final assistant message alone: llama.cpp's server,
    Ollama), ``off``, or ``auto``: send both fields, and learn from a refusal that the
    server cannot."""
    extra_body: dict[str, Any] = Field(default_factory=dict)
    """Further request fields (e.g. vLLM's ``top_k``); the fields aligntime sets itself win."""


class OpenAIGenerator(Generator):
    """Samples candidates from an OpenAI-compatible ``/chat/completions`` endpoint."""

    Options = OpenAIOptions
    name = "openai"

    def __init__(self, options: OpenAIOptions) -> None:
        self.options = options
        self._headers = {"Content-Type": "application/json", **self._auth_header()}
        self._url = f"{options.base_url}/chat/completions"
        self._key = (options.base_url, options.model)
        # Fields of every request; the ones aligntime sets itself win over extra_body.
        self._fixed = {**options.extra_body, "model": options.model}
        self._retry = RetryPolicy(
            options.max_retries, options.backoff_s, options.max_backoff_s, options.timeout_s
        )
        # One client per event loop: a client's connections belong to the loop that opened
        # them, and the CLI runs each call in a fresh asyncio.run loop.
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClient] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def capabilities(self) -> Capabilities:
        """What this server is known to do, read afresh: the first requests probe it.

        Continuing answers counts as possible until the server refuses to.
        """
        return Capabilities(
            n_sampling=self._native() is True,
            logprobs=True,
            token_steps=self._continuation() is not None,
            # Passed on as OpenAI spells them; what the server makes of them is checked.
            response_format=True,
            tools=True,
        )

    def _auth_header(self) -> dict[str, str]:
        env = self.options.api_key_env
        if not env:
            return {}
        key = os.environ.get(env)
        if key:
            return {"Authorization": f"Bearer {key}"}
        if "api_key_env" in self.options.model_fields_set:
            raise ConfigError(
                f"option api_key_env names {env!r}, which is not set in the environment",
                hint=f"export {env}=<your key>, or remove api_key_env for a server without keys",
            )
        return {}

    def _native(self) -> bool | None:
        """Whether to send n: True/False when known, None while auto has not yet probed."""
        mode = self.options.n_mode
        if mode != "auto":
            return mode == "native"
        return _native_n.get(self._key)

    def _remember(self, native: bool) -> None:
        if self._key not in _native_n:
            log.info(
                "%s (%s) %s n; %s",
                self.options.base_url,
                self.options.model,
                "honours" if native else "does not honour",
                "sampling natively" if native else "fanning out n=1 requests",
            )
        _native_n[self._key] = native

    def _continuation(self) -> dict[str, Any] | None:
        """Fields that ask for a continuation; None when the server cannot continue answers."""
        mode = self.options.continuation
        if mode == "off" or (mode == "auto" and _continues.get(self._key) is False):
            return None
        return {} if mode == "prefill" else chat.CONTINUE_FINAL_MESSAGE

    async def _client(self) -> OpenAIClient:
        loop = asyncio.get_running_loop()
        # A client of a finished loop holds that loop alive through its connections;
        # dropping it lets both be collected.
        for dead in [lp for lp in self._clients if lp.is_closed()]:
            del self._clients[dead]
        entry = self._clients.get(loop)
        if entry is None:
            o = self.options
            client = make_client(
                o.base_url,
                self._retry,
                connect_timeout_s=o.connect_timeout_s,
                max_connections=max(o.concurrency, 10),
            )
            keeper = _close_with_loop(client)
            await keeper.__anext__()
            entry = self._clients[loop] = _LoopClient(client, keeper)
        return entry.client

    # --- requests ---------------------------------------------------------------------

    def _body(self, messages: Sequence[Message], params: GenerationParams) -> dict[str, Any]:
        sampling = self.options.resolve(params)
        return chat.chat_body(
            messages, sampling, logprobs=self.options.logprobs, fixed=self._fixed, params=params
        )

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """One request with retries; every failure becomes a BackendError."""
        where = f"{self.options.base_url} (model {self.options.model!r})"
        client = await self._client()
        try:
            return await post_json(client, self._url, body, self._headers, self._retry)
        except RetriesExhausted as exc:
            raise BackendError(
                f"{where} failed after {exc.attempts} attempts: {exc.last.message}",
                hint="check that the server is running and reachable; raise max_retries "
                "or timeout_s for a slow or busy server",
                status=exc.last.status,
            ) from exc
        except HTTPFailure as exc:
            # A prompt too long for the model is the caller's to fix, not a broken backend.
            too_long = (
                chat.context_length_error(exc.server_message)
                if exc.status in (400, 413, 422)
                else None
            )
            if too_long is not None:
                raise too_long from exc
            raise BackendError(
                f"{where} rejected the request: {exc.message}",
                hint=_hint(exc.status),
                status=exc.status,
            ) from exc

    async def generate(
        self, messages: Sequence[Message], n: int, params: GenerationParams
    ) -> Generation:
        body = self._body(messages, params)
        native = self._native()
        replies: list[dict[str, Any]] = []
        errors: list[BackendError] = []
        if n > 1 and native is not False:
            try:
                reply = await self._post({**body, "n": n})
            except BackendError as exc:
                failure = exc.__cause__
                rejected_n = (
                    native is None
                    and isinstance(failure, HTTPFailure)
                    and failure.status in (400, 422)
                    and _MENTIONS_N.search(failure.server_message) is not None
                )
                if not rejected_n:
                    raise
                self._remember(False)
            else:
                got = len(chat.choices_of(reply))
                if native is None:
                    self._remember(got >= n)
                replies.append(reply)
        have = sum(len(chat.choices_of(r)) for r in replies)
        if have < n and (native is not True or not replies):
            fanned, errors = await self._fan_out(body, n - have, first=have)
            replies += fanned
        candidates, usage = chat.collect(replies)
        candidates = candidates[:n]  # a server that sent more choices than asked
        wanted = min(self.options.min_candidates, n)
        if len(candidates) < n:
            log.warning(
                "%s returned %d of %d candidates%s",
                self.options.base_url,
                len(candidates),
                n,
                f"; {len(errors)} requests failed, first: {errors[0].message}" if errors else "",
            )
        if len(candidates) < wanted:
            reason = errors[0].message if errors else "the server returned too few choices"
            hint = "lower min_candidates in the policy to accept partial results"
            if not candidates and errors:
                hint = errors[0].hint or hint
            raise BackendError(
                f"only {len(candidates)} of {n} candidates arrived, fewer than min_candidates "
                f"({wanted}): {reason}",
                hint=hint,
                status=errors[0].status if errors else None,
            )
        return Generation(candidates, usage)

    async def _fan_out(
        self, body: dict[str, Any], count: int, *, first: int
    ) -> tuple[list[dict[str, Any]], list[BackendError]]:
        """``count`` concurrent n=1 requests; candidate i gets seed + i when a seed is set."""
        gate = asyncio.Semaphore(self.options.concurrency)

        async def one(i: int) -> dict[str, Any]:
            async with gate:
                return await self._post(chat.part_body(body, 1, i))

        results = await asyncio.gather(
            *(one(first + i) for i in range(count)), return_exceptions=True
        )
        replies: list[dict[str, Any]] = []
        errors: list[BackendError] = []
        for result in results:
            if isinstance(result, BackendError):
                errors.append(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                replies.append(result)
        return replies, errors

    async def continue_answers(self, partial: PartialAnswers) -> Generation:
        fields = self._continuation()
        if fields is None:
            return await super().continue_answers(partial)
        body = {**self._body(partial.messages, partial.params), **fields}
        body["max_tokens"] = partial.max_tokens
        prefixes = partial.prefixes
        requests = [chat.continuation_body(body, p, i) for i, p in enumerate(prefixes)]
        replies = [await self._continue(requests[0])]  # alone: it may be the probe
        gate = asyncio.Semaphore(self.options.concurrency)

        async def one(request: dict[str, Any]) -> dict[str, Any]:
            async with gate:
                return await self._post(request)

        replies += await asyncio.gather(*(one(r) for r in requests[1:]))
        return chat.continuations(replies, prefixes)

    async def _continue(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send a request that continues a partial answer; the first one with
        ``continuation: auto`` learns whether the server can."""
        if self.options.continuation != "auto" or self._key in _continues:
            return await self._post(request)
        try:
            reply = await self._post(request)
        except BackendError as exc:
            failure = exc.__cause__
            if (
                isinstance(failure, HTTPFailure)
                and failure.status in (400, 422)
                and _MENTIONS_CONTINUE.search(failure.server_message) is not None
            ):
                _continues[self._key] = False
                log.info("%s (%s) cannot continue answers", *self._key)
                raise BackendError(
                    f"{self.options.base_url} (model {self.options.model!r}) does not continue "
                    f"partial answers: {failure.message}",
                    hint="search strategies need a server that does (vLLM, SGLang, TGI, "
                    "llama.cpp); set the generator's continuation to prefill if this one "
                    "continues a final assistant message without those fields",
                    status=failure.status,
                ) from exc
            raise
        _continues[self._key] = True
        return reply

    async def next_token_logprobs(
        self, messages: Sequence[Message], top_k: int = 20
    ) -> dict[str, float]:
        body = chat.logprobs_body(messages, top_k, self._fixed)
        if not messages or messages[-1].role != "assistant":
            return chat.top_logprobs(await self._post(body), self.options.base_url)
        # The next token of a partial answer.
        fields = self._continuation()
        if fields is None:
            raise BackendError(
                f"{self.options.base_url} (model {self.options.model!r}) cannot continue "
                "partial answers, so it cannot give their next token's log-probabilities",
                hint="set the generator's continuation option to a mode the server supports",
            )
        reply = await self._continue({**body, **fields})
        return chat.top_logprobs(reply, self.options.base_url)

    # --- lifecycle --------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the HTTP client of the running event loop."""
        entry = self._clients.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry.keeper.aclose()

    def close(self) -> None:
        """Close the HTTP clients of loops that are neither running nor closed.

        Clients of loops that ran under ``asyncio.run`` were already closed when
        that loop shut down; a running loop closes its own at shutdown too.
        """
        for loop, entry in list(self._clients.items()):
            if not loop.is_closed() and not loop.is_running():
                loop.run_until_complete(entry.keeper.aclose())
        self._clients.clear()


@dataclass(frozen=True)
class _LoopClient:
    client: OpenAIClient
    keeper: AsyncGenerator[None, None]


async def _close_with_loop(client: OpenAIClient) -> AsyncGenerator[None, None]:
    """Holds ``client`` open for the life of its event loop, then closes it.

    It stays suspended at its ``yield``; when the loop shuts down (``asyncio.run``
    calls ``shutdown_asyncgens``) it is resumed and closes the client's
    connections, which would otherwise outlive their loop as unclosed sockets.
    """
    try:
        yield
    finally:
        await client.close()


def _hint(status: int | None) -> str:
    if status in (401, 403):
        return "check the API key (the variable named by api_key_env) and its permissions"
    if status == 404:
        return "check base_url (it usually ends in /v1) and that the server serves this model"
    if status is not None and status >= 500:
        return "the server failed and asked not to be retried (x-should-retry); see its logs"
    return "the server refused the request as sent; its message above says which field"
