"""What a strategy reaches the world through: one request's generator and scorers.

A :class:`SearchContext` is made by the aligner for each request. Every model
call a strategy makes goes through it (:meth:`~SearchContext.generate`,
:meth:`~SearchContext.extend`, :meth:`~SearchContext.next_token_logprobs`,
:meth:`~SearchContext.score`), and it records the tokens and seconds each one
cost, so the result's usage and timings are counted in one place.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from aligntime.request import AlignRequest, reseeded
from aligntime.types import Candidate, Generation, GenerationParams, Message, Usage

if TYPE_CHECKING:
    from aligntime.generators.base import Generator

ScoreFn = Callable[[list[Candidate]], Awaitable[list[Candidate]]]


@dataclass
class SearchOutcome:
    """A request's candidates and what producing them cost."""

    candidates: list[Candidate]
    usage: Usage = field(default_factory=Usage)
    generate_s: float = 0.0
    score_s: float = 0.0


@dataclass
class SearchContext:
    """One request, as a strategy sees it: what to sample from and how to score.

    ``candidates`` collects what :meth:`sample` draws; a search strategy that
    writes its own answers hands them back in its :class:`SearchOutcome` instead.
    """

    generator: Generator
    prompt_messages: list[Message]
    """The conversation with the policy's prompt applied: what the generator reads."""
    request: AlignRequest
    """The request, checked against the policy (its ``n`` is set)."""
    max_tokens: int
    """Token limit of one answer."""
    scorer: ScoreFn
    """Scores candidates (complete or partial) with the policy's scorers and gates."""
    budget: int = 0
    """Most candidates the request may sample: the policy's budget (never less than N)."""
    offered: Sequence[Candidate] = ()
    """Candidates the input gate adds to the first round (a steered request's refusal)."""
    started: float = field(default_factory=time.perf_counter)
    candidates: list[Candidate] = field(default_factory=list)
    """Every candidate :meth:`sample` has drawn and scored, in order."""
    sampled: int = 0
    """How many of ``candidates`` the generator wrote (offered ones are not counted)."""
    usage: Usage = field(default_factory=Usage)
    generate_s: float = 0.0
    score_s: float = 0.0

    @property
    def n(self) -> int:
        """The N the request asked for (the policy's when it named none)."""
        return self.request.n or 1

    @property
    def params(self) -> GenerationParams:
        """The request's sampling settings."""
        return self.request.params

    @property
    def elapsed_s(self) -> float:
        """Seconds since the request started."""
        return time.perf_counter() - self.started

    async def generate(self, n: int, params: GenerationParams | None = None) -> Generation:
        """``n`` fresh answers to the prompt (the request's settings unless ``params``)."""
        return await self._generating(
            self.generator.generate(self.prompt_messages, n, params or self.params)
        )

    async def extend(self, texts: Sequence[str], max_tokens: int) -> Generation:
        """Continue each partial answer by at most ``max_tokens`` tokens."""
        return await self._generating(
            self.generator.extend(self.prompt_messages, list(texts), max_tokens, self.params)
        )

    async def next_token_logprobs(self, text: str, top_k: int) -> dict[str, float]:
        """The ``top_k`` likeliest next tokens after the partial answer ``text``.

        Counted as one completion token: the step writes one.
        """
        answer = [Message("assistant", text)] if text else []
        top: dict[str, float] = {}

        async def step() -> Generation:
            messages = [*self.prompt_messages, *answer]
            top.update(await self.generator.next_token_logprobs(messages, top_k=top_k))
            return Generation([], Usage(0, 1))

        await self._generating(step())
        return top

    async def score(self, candidates: list[Candidate]) -> list[Candidate]:
        """Score candidates with the policy's scorers and gates."""
        t0 = time.perf_counter()
        scored = await self.scorer(candidates)
        self.score_s += time.perf_counter() - t0
        return scored

    async def sample(self, n: int) -> list[Candidate]:
        """One sampling round: ``n`` answers, scored and added to ``candidates``.

        With a fixed seed, candidate k of the request is seeded as the generators seed
        their k-th candidate, so a later round adds new samples.
        """
        generation = await self.generate(n, reseeded(self.params, self.sampled))
        fresh = list(generation.candidates)
        if not self.candidates:
            fresh += self.offered
        scored = await self.score(fresh)
        self.candidates += scored
        self.sampled += len(generation.candidates)
        return scored

    def outcome(self, candidates: list[Candidate] | None = None) -> SearchOutcome:
        """``candidates`` (default: those :meth:`sample` drew) with the costs recorded."""
        chosen = self.candidates if candidates is None else candidates
        return SearchOutcome(chosen, self.usage, self.generate_s, self.score_s)

    def with_max_tokens(self, max_tokens: int) -> GenerationParams:
        """The request's sampling settings with another token limit."""
        return replace(self.params, max_tokens=max_tokens)

    async def _generating(self, call: Awaitable[Generation]) -> Generation:
        """Await a generator call, adding its tokens and seconds to the request's."""
        t0 = time.perf_counter()
        generation = await call
        self.generate_s += time.perf_counter() - t0
        self.usage = self.usage + generation.usage
        return generation
