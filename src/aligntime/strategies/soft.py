"""Soft best-of-N: sample the answer with probability proportional to exp(score / beta).

Hard best-of-N always shows the top-scoring candidate, which over-optimises
against an imperfect scorer (reward hacking). Sampling from the Boltzmann
distribution over the candidates' combined scores keeps most of the gain while
staying closer to the model's own distribution; ``beta`` moves between the two
extremes: near 0 it is best-of-N, very large it is a uniform pick.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from pydantic import ConfigDict, Field

from aligntime.registry import OptionsModel
from aligntime.strategies.base import Decision, RoundState, Strategy, eligible
from aligntime.types import Candidate


class SoftBestOfNOptions(OptionsModel):
    """Options of the ``soft_best_of_n`` strategy."""

    model_config = ConfigDict(extra="forbid")

    beta: float = Field(default=0.1, gt=0.0)
    """Temperature: small values favour the top score, large ones pick uniformly."""
    seed: int | None = None
    """Seed of the strategy's random generator, for reproducible picks."""


class SoftBestOfN(Strategy):
    """Pick an eligible candidate at random, weighted by ``exp(score / beta)``.

    Candidates without a (finite) score get weight 0 unless none has one, in
    which case the pick is uniform. The generator is the strategy's own
    :class:`random.Random`, so a ``seed`` makes the sequence of picks reproducible.
    """

    name = "soft_best_of_n"

    Options = SoftBestOfNOptions

    def __init__(self, options: SoftBestOfNOptions | None = None) -> None:
        self.options = options or SoftBestOfNOptions()
        self._rng = random.Random(self.options.seed)

    def probabilities(self, candidates: Sequence[Candidate]) -> dict[int, float]:
        """The pick probability of each eligible candidate, by index."""
        passed = eligible(candidates)
        if not passed:
            return {}
        scores = [_finite_or_none(candidates[i].score) for i in passed]
        known = [s for s in scores if s is not None]
        if not known:
            return {i: 1.0 / len(passed) for i in passed}
        # Subtracting the maximum keeps exp() from overflowing for small beta.
        top = max(known)
        beta = self.options.beta
        weights = [0.0 if s is None else math.exp((s - top) / beta) for s in scores]
        total = sum(weights)  # at least 1: the top candidate has weight exp(0)
        return {i: w / total for i, w in zip(passed, weights, strict=True)}

    def decide(self, candidates: Sequence[Candidate], state: RoundState) -> Decision:
        """Sample one eligible candidate, or ``None`` when none passed."""
        probs = self.probabilities(candidates)
        if not probs:
            return Decision(None, reason=f"none of {len(candidates)} candidates passed the gates")
        indices = list(probs)
        best = self._rng.choices(indices, weights=[probs[i] for i in indices])[0]
        return Decision(
            best,
            reason=f"sampled with probability {probs[best]:.3f} (beta={self.options.beta:g}) "
            f"among {len(indices)} that passed",
        )


def _finite_or_none(score: float | None) -> float | None:
    return score if score is not None and math.isfinite(score) else None
