"""The embedded backend: llama.cpp through the prebuilt ``xllamacpp`` wheel.

One ``xllamacpp.Server`` (llama.cpp's own server loop, without HTTP) is kept
per model file and shared by everything that uses that model in the process,
so a judge on the generator's model costs no second copy of the weights. The N
candidates of a request go out as one chat completion with ``n`` set: llama.cpp
evaluates the shared prompt once and decodes the N continuations as one batch
in parallel slots; the children start from the parent slot's prompt cache (with
the unified KV cache set below they share its cells rather than copy them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from aligntime.errors import BackendError, ModelError
from aligntime.generators import openai_chat as chat
from aligntime.generators.base import Capabilities, Generator, PartialAnswers
from aligntime.generators.llamacpp_cache import PromptCounters
from aligntime.generators.options import SamplingOptions
from aligntime.models import store
from aligntime.types import Candidate, Generation, GenerationParams, Message, Usage

log = logging.getLogger(__name__)

PROBE_CONCURRENCY = 1
"""One-token requests evaluated at once per engine and event loop (see ``probe``)."""


class LlamaCppOptions(SamplingOptions):
    """Options of the ``llamacpp`` backend."""

    model: str = "smollm2-135m-instruct"
    """Catalogue name or path of a GGUF file."""
    parallel: int = Field(8, ge=1, le=64)
    """Sequences decoded together in one batch (llama.cpp slots)."""
    context: int = Field(2048, ge=256, le=131072)
    """Context length of one sequence (prompt plus answer), in tokens."""
    threads: int | None = Field(None, ge=1)
    """CPU threads for llama.cpp; default: every core this process may use."""


class LlamaCppEngine:
    """A loaded GGUF model behind llama.cpp's server loop (thread-safe)."""

    def __init__(self, path: Path, *, parallel: int, context: int, threads: int | None) -> None:
        bound_spinning()
        try:
            import xllamacpp
        except ImportError as exc:
            from aligntime.extras import missing

            raise missing("the llamacpp backend", exc, extra="embedded") from exc
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_parallel = parallel
        params.n_ctx = context * parallel
        # One KV cache for every slot: the N children of a request hold the prompt's
        # cells together instead of a copy each, and any slot may use free cells.
        params.kv_unified = True
        n_threads = threads or default_threads()
        params.cpuparams.n_threads = n_threads
        params.cpuparams_batch.n_threads = n_threads
        params.verbosity = 3 if log.isEnabledFor(logging.DEBUG) else 0
        self.path = path
        self.parallel = parallel
        self.threads = n_threads
        """CPU threads llama.cpp computes with."""
        self.prompt_tokens = PromptCounters()
        """llama.cpp's own count of prompt tokens evaluated and reused, every request."""
        self._probe_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]
        self._probe_gates = weakref.WeakKeyDictionary()
        try:
            self._server = xllamacpp.Server(params)
        except RuntimeError as exc:
            raise ModelError(
                f"llama.cpp could not load {path}: {exc}",
                hint="the file is not a valid GGUF model; pull it again with "
                "`aligntime models pull NAME --force` or check the path",
            ) from exc

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """One OpenAI-shaped chat completion; raises BackendError on an error reply."""
        reply: dict[str, Any] = self._server.handle_chat_completions(body)
        if "error" in reply:
            err = reply["error"]
            message = err.get("message", err) if isinstance(err, dict) else err
            if isinstance(err, dict) and err.get("type") == "exceed_context_size_error":
                # The prompt does not fit: the caller's to shorten, not a broken engine.
                too_long = chat.context_length_error(
                    str(message),
                    prompt_tokens=_count(err.get("n_prompt_tokens")),
                    context_tokens=_count(err.get("n_ctx")),
                    known=True,
                )
                if too_long is not None:
                    raise too_long
            raise BackendError(f"llama.cpp rejected the request: {message}")
        self.prompt_tokens.record(reply)
        return reply

    async def probe(self, body: dict[str, Any]) -> dict[str, Any]:
        """A one-token request (a judge's verdict, a guided step), one at a time.

        Such a request is nearly all prompt evaluation. Batched together in the
        unified KV cache, every prompt token also attends over the other
        sequences' cells (masked), so on a CPU N probes at once took about 30%
        longer than N in a row; one at a time also lets a slot keep the prompt
        the next probe of the same answer starts with. Generation is not gated:
        decoding does gain from batching.
        """
        loop = asyncio.get_running_loop()
        gate = self._probe_gates.get(loop)
        if gate is None:
            gate = self._probe_gates[loop] = asyncio.Semaphore(PROBE_CONCURRENCY)
        async with gate:
            return await asyncio.to_thread(self.chat, body)


SPIN_COUNT = "1000"
"""How long (in spin iterations) a llama.cpp thread waits at a barrier before it sleeps."""


def default_threads() -> int:
    """llama.cpp's thread count when none is set: every core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def bound_spinning() -> None:
    """Make llama.cpp's threads sleep soon when they wait for each other.

    The xllamacpp wheel runs llama.cpp's threads on OpenMP (libgomp), whose barrier
    spins up to 300,000 iterations (milliseconds) before it sleeps. llama.cpp meets
    at a barrier after every operation of the graph, so when another thread takes a
    core (a scorer's ONNX or scikit-learn work, the event loop, another process), the
    other llama.cpp thread spins away the time the preempted one needs. On 2 cores
    that other jobs were using, three default-policy requests took 89 and 155 s with
    the unbounded spin against 9 and 11 s with this bound (alternating runs); on an
    idle machine the bound still covers the microseconds between threads. libgomp
    reads this once, when it loads, so it is set before the first import of
    xllamacpp; an ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` the user set wins.
    """
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT


_engines: dict[tuple[str, int, int, int | None], LlamaCppEngine] = {}
_engines_lock = threading.Lock()


def get_engine(
    model: str, *, parallel: int = 8, context: int = 2048, threads: int | None = None
) -> LlamaCppEngine:
    """The shared engine for a model and settings, loading it on first use."""
    path = store.resolve(model)
    key = (str(path.resolve()), parallel, context, threads)
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            engine = LlamaCppEngine(path, parallel=parallel, context=context, threads=threads)
            _engines[key] = engine
        return engine


class LlamaCppGenerator(Generator):
    """Generates candidates with a GGUF model on llama.cpp (CPU)."""

    Options = LlamaCppOptions
    name = "llamacpp"
    # llama.cpp turns a response_format into a grammar. Tools it took and ignored: the
    # catalogue's model answered in prose even under tool_choice "required" (measured on
    # xllamacpp 2026.10.11549), so a request with tools is refused rather than misled.
    capabilities = Capabilities(
        n_sampling=True, logprobs=True, token_steps=True, response_format=True
    )

    def __init__(self, options: LlamaCppOptions | None = None) -> None:
        self.options = options or LlamaCppOptions()
        self._engine: LlamaCppEngine | None = None

    @property
    def engine(self) -> LlamaCppEngine:
        if self._engine is None:
            o = self.options
            self._engine = get_engine(
                o.model, parallel=o.parallel, context=o.context, threads=o.threads
            )
        return self._engine

    def load(self) -> None:
        _ = self.engine

    def _body(self, messages: Sequence[Message], params: GenerationParams) -> dict[str, Any]:
        # The per-token log-probabilities are how we learn each choice's length:
        # llama.cpp's usage block counts the first choice only.
        sampling = self.options.resolve(params)
        return chat.chat_body(messages, sampling, logprobs=True, params=params)

    async def generate(
        self, messages: Sequence[Message], n: int, params: GenerationParams
    ) -> Generation:
        engine = await asyncio.to_thread(lambda: self.engine)
        body = self._body(messages, params)
        # Requests larger than the slot count are split; llama.cpp queues them.
        parts = [
            chat.part_body(body, min(engine.parallel, n - i), i)
            for i in range(0, n, engine.parallel)
        ]
        replies = await asyncio.gather(*(asyncio.to_thread(engine.chat, p) for p in parts))
        candidates, usage = chat.collect(list(replies))
        return Generation(candidates, usage)

    async def continue_answers(self, partial: PartialAnswers) -> Generation:
        engine = await asyncio.to_thread(lambda: self.engine)
        body = {**self._body(partial.messages, partial.params), "max_tokens": partial.max_tokens}
        # A final assistant message is a prefill: llama.cpp's chat template leaves
        # the turn open and continues it, and a slot that already holds the prefix
        # reuses its cache, so only the new tokens cost a forward pass each.
        prefixes = partial.prefixes
        requests = [chat.continuation_body(body, p, i) for i, p in enumerate(prefixes)]
        replies = await asyncio.gather(*(asyncio.to_thread(engine.chat, r) for r in requests))
        return chat.continuations(replies, prefixes)

    async def next_token_logprobs(
        self, messages: Sequence[Message], top_k: int = 20
    ) -> dict[str, float]:
        engine = await asyncio.to_thread(lambda: self.engine)
        reply = await engine.probe(chat.logprobs_body(messages, top_k))
        return chat.top_logprobs(reply, "llama.cpp")

    async def stream_continuation(
        self, partial: PartialAnswers, block_tokens: int
    ) -> AsyncGenerator[Generation, None]:
        """llama.cpp's own token stream: one item per token as the slot writes it
        (``block_tokens`` is not needed). Closing the iterator stops the decoding."""
        engine = await asyncio.to_thread(lambda: self.engine)
        max_tokens = partial.max_tokens
        body = {**self._body(partial.messages, partial.params), "max_tokens": max_tokens}
        body = chat.continuation_body({**body, "stream": True}, partial.prefixes[0], 0)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue()
        stop = threading.Event()

        def on_chunk(chunk: dict[str, Any]) -> bool:
            loop.call_soon_threadsafe(queue.put_nowait, chunk)
            return stop.is_set()  # True asks llama.cpp to stop this request

        def run() -> None:
            try:
                engine._server.handle_chat_completions(body, on_chunk)
                loop.call_soon_threadsafe(queue.put_nowait, None)
            except BaseException as exc:  # reaches the caller through the queue
                loop.call_soon_threadsafe(queue.put_nowait, exc)

        worker = asyncio.ensure_future(asyncio.to_thread(run))
        written = 0
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise BackendError(f"llama.cpp failed while streaming: {item}") from item
                piece = _stream_piece(item)
                if piece is None:
                    continue
                written += piece.tokens
                timings = item.get("timings") or {}
                prompt = sum(_count(timings.get(k)) or 0 for k in ("prompt_n", "cache_n"))
                yield Generation([piece], Usage(prompt, piece.tokens))
                if piece.finish_reason != "length" or written >= max_tokens:
                    return
        finally:
            stop.set()
            await asyncio.shield(worker)


def _stream_piece(chunk: dict[str, Any]) -> Candidate | None:
    """One streamed chunk as new text: ``None`` for a chunk that adds nothing and
    ends nothing (the role chunk); raises on an error chunk."""
    if "error" in chunk:
        raise BackendError(f"llama.cpp rejected the request: {chunk['error']}")
    choices = chunk.get("choices") or [{}]
    choice = choices[0]
    text = (choice.get("delta") or {}).get("content") or ""
    finish = choice.get("finish_reason")
    if not text and finish is None:
        return None
    # One streamed delta is one token (its log-probabilities list it when asked for).
    entries = ((choice.get("logprobs") or {}).get("content")) or []
    tokens = len(entries) if entries else (1 if text else 0)
    # "length" until the answer ends; the caller also ends it at max_tokens.
    reason = "length" if finish is None or finish == "length" else "stop"
    return Candidate(text=text, tokens=tokens, finish_reason=reason)


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) else None
