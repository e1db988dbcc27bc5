"""Per-request token accounting around a shared generator.

The generator is shared by every request, so what one request generated is
tracked in a context variable: each request installs its own
:class:`UsageMeter`, and :class:`MeteredGenerator` adds every generation to
the meter of the request it runs for (context variables follow asyncio tasks).
This keeps ``usage`` right even when a request ends without a ``Result``
(a scorer failing closed, a time-out).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aligntime.generators.base import Capabilities, Generator, PartialAnswers
from aligntime.types import Generation, GenerationParams, Message, Usage


@dataclass
class UsageMeter:
    """Tokens and candidates generated for one request so far."""

    usage: Usage = field(default_factory=Usage)
    candidates: int = 0

    def add(self, generation: Generation) -> None:
        self.usage = self.usage + generation.usage
        self.candidates += len(generation.candidates)


current_meter: contextvars.ContextVar[UsageMeter | None] = contextvars.ContextVar(
    "aligntime_usage_meter", default=None
)


class MeteredGenerator(Generator):
    """Delegates to a generator and reports each generation to the current request's meter."""

    def __init__(self, inner: Generator) -> None:
        self.inner = inner
        self.name = inner.name

    @property
    def capabilities(self) -> Capabilities:
        """The inner generator's, read through: they change as it probes its server."""
        return self.inner.capabilities

    def __getattr__(self, attr: str) -> Any:
        # Backend-specific attributes (``options``, ``engine``) stay reachable.
        return getattr(self.inner, attr)

    async def generate(
        self, messages: Sequence[Message], n: int, params: GenerationParams
    ) -> Generation:
        generation = await self.inner.generate(messages, n, params)
        meter = current_meter.get()
        if meter is not None:
            meter.add(generation)
        return generation

    async def continue_answers(self, partial: PartialAnswers) -> Generation:
        p = partial
        # Through extend: an inner generator may implement that directly.
        generation = await self.inner.extend(p.messages, p.prefixes, p.max_tokens, p.params)
        meter = current_meter.get()
        if meter is not None:
            meter.usage = meter.usage + generation.usage
        return generation

    async def next_token_logprobs(
        self, messages: Sequence[Message], top_k: int = 20
    ) -> dict[str, float]:
        return await self.inner.next_token_logprobs(messages, top_k)

    async def stream_continuation(
        self, partial: PartialAnswers, block_tokens: int
    ) -> AsyncGenerator[Generation, None]:
        # The inner generator's own stream (llama.cpp's token stream), metered piece by piece.
        p = partial
        pieces = self.inner.stream(
            p.messages, p.prefixes[0], p.max_tokens, p.params, block_tokens=block_tokens
        )
        async with contextlib.aclosing(pieces):  # closed early: the inner stops too
            async for piece in pieces:
                meter = current_meter.get()
                if meter is not None:
                    meter.usage = meter.usage + piece.usage
                yield piece

    def load(self) -> None:
        self.inner.load()

    def close(self) -> None:
        self.inner.close()
