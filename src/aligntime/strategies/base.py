"""The strategy contract: choose what the user sees from scored candidates."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from aligntime.types import Candidate


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
