"""Rejection sampling: resample until a candidate clears a score threshold.

This is adaptive N: an easy request stops after the first round, a hard one
spends more of the policy's budget, and when the budget is spent without an
answer good enough the user gets the policy's fallback rather than a weak one.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field

from aligntime.strategies.base import Decision, Strategy, argmax_score, eligible
from aligntime.types import Candidate


class Rejection(Strategy):
    """Accept the best candidate that passed and reaches ``threshold``; else sample more.

    With ``batch`` unset, each extra round samples as many candidates as the
    first round did. The aligner announces the first round through
    :meth:`initial_n`; a caller that only calls :meth:`decide` gets the number of
    candidates seen at the first call of a request instead. That size is kept on
    the instance, so concurrent requests with different N that share one
    strategy may size each other's extra rounds (which changes cost, never the
    choice); set ``batch`` to pin it.
    """

    name = "rejection"

    class Options(BaseModel):
        """Options of the ``rejection`` strategy."""

        model_config = ConfigDict(extra="forbid")

        threshold: float = 0.5
        """Combined score a candidate must reach to be accepted."""
        batch: int | None = Field(default=None, ge=1)
        """Candidates to sample per extra round (default: as many as the first round)."""

    def __init__(self, options: Options | None = None) -> None:
        self.options = options or Rejection.Options()
        self._round: int | None = None
        self._seen = 0

    def initial_n(self, requested: int) -> int:
        """Sample ``requested`` first, and remember it as the size of later rounds."""
        self._round = requested
        self._seen = 0
        return requested

    def decide(self, candidates: Sequence[Candidate], budget: int) -> Decision:
        """Accept, ask for another round, or give up (``None``: the policy's fallback)."""
        # Within a request the candidate list only grows, so a list no longer than
        # the one seen last time means a new request that skipped initial_n().
        if self._round is None or len(candidates) <= self._seen:
            self._round = max(1, len(candidates))
        self._seen = len(candidates)

        threshold = self.options.threshold
        good = [i for i in eligible(candidates) if _reaches(candidates[i].score, threshold)]
        best = argmax_score(candidates, good)
        if best is not None:
            return Decision(
                best,
                reason=f"{len(good)} of {len(candidates)} candidates reached {threshold:g}",
            )
        if budget > 0:
            more = min(self.options.batch or self._round, budget)
            return Decision(
                None,
                more=more,
                reason=f"none of {len(candidates)} candidates reached {threshold:g}; "
                f"sampling {more} more",
            )
        return Decision(
            None,
            reason=f"budget spent: none of {len(candidates)} candidates passed and "
            f"reached {threshold:g}",
        )


def _reaches(score: float | None, threshold: float) -> bool:
    """Whether a combined score is known and at least ``threshold`` (NaN never is)."""
    return score is not None and score >= threshold
