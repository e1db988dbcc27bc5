"""The strategy contract: choose what the user sees from scored candidates."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aligntime.types import Candidate, GenerationParams, Message, Usage

if TYPE_CHECKING:
    from aligntime.generators.base import Generator


@dataclass(frozen=True)
class Decision:
    """A strategy's verdict after one round of sampling and scoring.

    ``best`` indexes the chosen candidate (``None``: nothing eligible). When
    ``more`` is positive the aligner samples that many further candidates and
    asks again; it stops asking once the policy's budget is spent, and then
    ``best`` stands (``None`` means the policy's fallback text is returned).
    """

    best: int | None
    more: int = 0
    reason: str = ""


@dataclass(frozen=True)
class RoundState:
    """What the aligner knows about one request between two rounds.

    Strategies are shared by concurrent requests, so anything per request
    reaches them through this object rather than through instance state.
    """

    requested: int
    """The N the request asked for."""
    budget: int
    """Candidates the aligner may still sample for this request."""
    elapsed_s: float = 0.0
    """Seconds since the request started."""


class Strategy(ABC):
    """Pure selection logic: no I/O, no model calls.

    ``candidates`` holds every candidate sampled so far for the request, each
    with ``score`` (combined, higher is better) and ``passed`` (all gates held).
    ``budget`` is how many more candidates the aligner may still sample.
    """

    name: str = "strategy"

    def initial_n(self, requested: int) -> int:
        """How many candidates to sample in the first round for a requested N."""
        return requested

    @abstractmethod
    def decide(self, candidates: Sequence[Candidate], budget: int) -> Decision:
        """Pick a candidate, or ask for more."""

    def next_round(self, candidates: Sequence[Candidate], state: RoundState) -> Decision:
        """What the aligner calls after each round; strategies that need the request's
        N or its elapsed time override this instead of :meth:`decide`."""
        return self.decide(candidates, state.budget)


ScoreFn = Callable[[list[Candidate]], Awaitable[list[Candidate]]]


@dataclass
class SearchContext:
    """Everything a search strategy needs to drive one request itself."""

    generator: Generator
    prompt_messages: list[Message]
    """The conversation with the policy's prompt applied: what the generator reads."""
    n: int
    """The N the request asked for."""
    params: GenerationParams
    max_tokens: int
    """Token limit of one answer."""
    score: ScoreFn
    """Scores candidates (complete or partial) with the policy's scorers and gates."""


@dataclass
class SearchOutcome:
    """What a search strategy hands back: every candidate it kept, and its costs."""

    candidates: list[Candidate]
    usage: Usage = field(default_factory=Usage)
    generate_s: float = 0.0
    score_s: float = 0.0


class SearchStrategy(Strategy):
    """A strategy that drives the generator itself (partial answers, token steps).

    The aligner hands it a :class:`SearchContext` instead of sampling rounds;
    :meth:`decide` then picks among the candidates :meth:`search` returned.
    """

    @abstractmethod
    async def search(self, ctx: SearchContext) -> SearchOutcome:
        """Produce scored candidates for one request."""

    def decide(self, candidates: Sequence[Candidate], budget: int) -> Decision:
        """The best complete candidate that passed every gate."""
        complete = [i for i in eligible(candidates) if candidates[i].finish_reason != REJECTED]
        best = argmax_score(candidates, complete)
        if best is None:
            return Decision(None, reason="no complete candidate passed every gate")
        return Decision(best, reason=f"best of {len(complete)} complete candidates")


REJECTED = "rejected"
"""``finish_reason`` of a candidate a search strategy dropped before it was complete."""
PARTIAL = "partial"
"""``finish_reason`` of a candidate still being written (scorers see partial text)."""


def eligible(candidates: Sequence[Candidate]) -> list[int]:
    """Indices of the candidates that passed every gate."""
    return [i for i, c in enumerate(candidates) if c.passed]


def argmax_score(candidates: Sequence[Candidate], indices: Sequence[int]) -> int | None:
    """The index among ``indices`` with the highest combined score; ties keep the earliest."""
    best: int | None = None
    best_score = float("-inf")
    for i in indices:
        s = candidates[i].score
        value = float("-inf") if s is None else s
        if best is None or value > best_score:
            best, best_score = i, value
    return best
