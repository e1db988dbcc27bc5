"""The generator contract: sample N candidate answers for one conversation."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

from pydantic import BaseModel

from aligntime.types import Generation, GenerationParams, Message, Usage


@dataclass(frozen=True)
class Capabilities:
    """What a generator backend can do beyond plain sampling."""

    n_sampling: bool = False
    """Samples N answers in one request from one shared prompt prefix. Informational:
    :meth:`Generator.generate` returns ``n`` candidates either way (a backend without it
    fans out itself), so callers always ask for all ``n`` in one call."""
    logprobs: bool = False
    """Returns next-token log-probabilities (needed by judges)."""
    token_steps: bool = False
    """Continues partial answers a few tokens at a time (:meth:`Generator.extend`), as
    search strategies need."""
    response_format: bool = False
    """Takes ``GenerationParams.response_format`` (JSON, a JSON Schema) and holds its
    answers to it where the engine can (a grammar); the aligner checks every answer."""
    tools: bool = False
    """Takes ``GenerationParams.tools`` and returns answers that call them as
    ``Candidate.tool_calls``."""


@dataclass(frozen=True)
class PartialAnswers:
    """What :meth:`Generator.extend` was asked: continue each of ``prefixes`` (partial
    answers to ``messages``) by at most ``max_tokens`` tokens."""

    messages: Sequence[Message]
    prefixes: Sequence[str]
    max_tokens: int
    params: GenerationParams


class Generator(ABC):
    """Samples candidate answers.

    Implementations use the engine's own n-sampling (one request, one shared
    prompt prefix) where the engine has it, and fan out concurrently otherwise.
    """

    name: str = "generator"
    Options: ClassVar[type[BaseModel] | None] = None
    """The pydantic model of the options a policy gives this implementation (its keys
    in the policy section); ``None``: it takes none. :func:`aligntime.registry.build`
    validates the keys against it and passes the instance to the constructor."""

    @property
    def capabilities(self) -> Capabilities:
        """What this backend can do. Read it where it matters, never copy it: a backend
        that learns what its server does (``openai``) reports what it knows now.
        A backend whose abilities are fixed sets a class attribute instead."""
        return Capabilities()

    @abstractmethod
    async def generate(
        self, messages: Sequence[Message], n: int, params: GenerationParams
    ) -> Generation:
        """Return ``n`` candidates for ``messages`` (the policy's prompt already applied)."""

    async def next_token_logprobs(
        self, messages: Sequence[Message], top_k: int = 20
    ) -> dict[str, float]:
        """Log-probabilities of the most likely first tokens of the reply.

        When the last message is from the assistant, it is a partial reply to
        continue, and the log-probabilities are those of its next token. Tokens
        that end the turn (end-of-sequence and other special tokens) appear as the
        empty string. Only backends whose ``capabilities.logprobs`` is True
        implement this.
        """
        raise NotImplementedError(f"the {self.name} backend does not return log-probabilities")

    async def extend(
        self,
        messages: Sequence[Message],
        prefixes: Sequence[str],
        max_tokens: int,
        params: GenerationParams,
    ) -> Generation:
        """Continue each partial answer in ``prefixes`` by at most ``max_tokens`` tokens.

        Returns one candidate per prefix, in order, holding only the new text (its
        ``tokens`` count only new tokens); ``finish_reason`` is "stop" when the answer
        ended and "length" when the step's token limit cut it. Prefixes are continued
        concurrently and share the engine's batching. Only backends whose
        ``capabilities.token_steps`` is True implement this, in
        :meth:`continue_answers`.
        """
        if not prefixes:
            return Generation([], Usage())
        return await self.continue_answers(PartialAnswers(messages, prefixes, max_tokens, params))

    async def continue_answers(self, partial: PartialAnswers) -> Generation:
        """The work of :meth:`extend`, given at least one prefix: what a backend that
        continues partial answers implements."""
        raise NotImplementedError(f"the {self.name} backend cannot continue partial answers")

    def stream(
        self,
        messages: Sequence[Message],
        prefix: str,
        max_tokens: int,
        params: GenerationParams,
        *,
        block_tokens: int = 8,
    ) -> AsyncGenerator[Generation, None]:
        """Continue one partial answer, yielding its new text as it is written.

        Each item holds one candidate with only the new text (and its tokens) and what
        that piece cost; the last item's ``finish_reason`` says how the answer ended
        ("stop", or "length" once ``max_tokens`` new tokens are written). Closing the
        iterator early stops the work. Needs ``capabilities.token_steps``; a backend
        with a token stream of its own implements :meth:`stream_continuation`.
        """
        partial = PartialAnswers(messages, [prefix], max_tokens, params)
        return self.stream_continuation(partial, block_tokens)

    async def stream_continuation(
        self, partial: PartialAnswers, block_tokens: int
    ) -> AsyncGenerator[Generation, None]:
        """The work of :meth:`stream` (one prefix in ``partial``); the default calls
        :meth:`extend` in blocks of ``block_tokens`` tokens."""
        written = 0
        text = partial.prefixes[0]
        while written < partial.max_tokens:
            step = min(block_tokens, partial.max_tokens - written)
            generation = await self.extend(partial.messages, [text], step, partial.params)
            piece = generation.candidates[0]
            written += piece.tokens
            text += piece.text
            # A block that wrote nothing ended the answer, whatever the backend said.
            cut = piece.finish_reason == "length"
            ended = not cut or written >= partial.max_tokens or not piece.tokens
            if ended and cut and written < partial.max_tokens:
                piece = replace(piece, finish_reason="stop")
            yield Generation([piece], generation.usage)
            if ended:
                return

    def load(self) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Load weights or open connections ahead of the first request."""

    def close(self) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Release the engine's resources."""
