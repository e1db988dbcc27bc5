"""Best-of-N: show the highest-scoring candidate that passed every gate."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ConfigDict

from aligntime.registry import OptionsModel
from aligntime.strategies.base import Decision, RoundState, Strategy, argmax_score, eligible
from aligntime.types import Candidate


class BestOfNOptions(OptionsModel):
    """Options of the ``best_of_n`` strategy (it has none)."""

    model_config = ConfigDict(extra="forbid")


class BestOfN(Strategy):
    """Pick the eligible candidate with the highest combined score; never resample.

    Ties keep the earliest candidate. When no candidate passed the gates the
    decision is ``None`` and the aligner returns the policy's fallback text.
    """

    name = "best_of_n"

    Options = BestOfNOptions
    only_leader_matters = True  # an argmax over the eligible candidates

    def __init__(self, options: BestOfNOptions | None = None) -> None:
        self.options = options or BestOfNOptions()

    def decide(self, candidates: Sequence[Candidate], state: RoundState) -> Decision:
        """Choose the best eligible candidate, or ``None`` when none passed."""
        passed = eligible(candidates)
        best = argmax_score(candidates, passed)
        if best is None:
            return Decision(None, reason=f"none of {len(candidates)} candidates passed the gates")
        return Decision(
            best, reason=f"highest score among {len(passed)} of {len(candidates)} that passed"
        )
