"""Rejection sampling: resample until a candidate clears a score threshold.

This is adaptive N: an easy request stops after the first round, a hard one
spends more of the policy's budget, and when the budget is spent without an
answer good enough the user gets the policy's fallback rather than a weak one.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ConfigDict, Field

from aligntime.registry import OptionsModel
from aligntime.strategies.base import (
    Decision,
    RoundState,
    Strategy,
    argmax_score,
    eligible,
)
from aligntime.types import Candidate


class RejectionOptions(OptionsModel):
    """Options of the ``rejection`` strategy."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = 0.5
    """Combined score a candidate must reach to be accepted."""
    batch: int | None = Field(default=None, ge=1)
    """Candidates to sample per extra round (default: the request's N)."""


class Rejection(Strategy):
    """Accept the best candidate that passed and reaches ``threshold``; else sample more.

    With ``batch`` unset, each extra round samples as many candidates as the
    request's N. Nothing about a request is kept on the instance, so one
    strategy serves concurrent requests.
    """

    name = "rejection"

    Options = RejectionOptions
    only_leader_matters = True  # an argmax, or a threshold test on the eligible candidates

    def __init__(self, options: RejectionOptions | None = None) -> None:
        self.options = options or RejectionOptions()

    def decide(self, candidates: Sequence[Candidate], state: RoundState) -> Decision:
        """Accept, ask for another round, or give up (``None``: the policy's fallback)."""
        threshold = self.options.threshold
        budget = state.budget
        good = [i for i in eligible(candidates) if reaches(candidates[i].score, threshold)]
        best = argmax_score(candidates, good)
        if best is not None:
            return Decision(
                best,
                reason=f"{len(good)} of {len(candidates)} candidates reached {threshold:g}",
            )
        if budget > 0:
            more = min(self.options.batch or state.requested, budget)
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


def reaches(score: float | None, threshold: float) -> bool:
    """Whether a combined score is known and at least ``threshold`` (NaN never is)."""
    return score is not None and score >= threshold
