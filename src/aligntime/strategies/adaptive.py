"""Adaptive N: sample in growing rounds and stop as soon as an answer is good enough.

Best-of-N pays for N answers on every request. Most requests are easy: the
first answer or two already pass every gate and score well, and the other
samples buy nothing. ``adaptive`` starts small (``first`` candidates), stops as
soon as one candidate passed every gate and reaches ``threshold``, and
otherwise grows the pool geometrically (1, 2, 4, 8 … with ``growth`` 2) until
it holds the request's N, or a token or time budget runs out. Then the best
candidate that passed wins, as in best-of-N; with none, the policy's fallback.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import ConfigDict, Field

from aligntime.registry import OptionsModel
from aligntime.strategies.base import Decision, RoundState, Strategy, argmax_score, eligible
from aligntime.strategies.rejection import reaches
from aligntime.types import Candidate


class AdaptiveOptions(OptionsModel):
    """Options of the ``adaptive`` strategy."""

    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(0.6, ge=0.0, le=1.0)
    """Combined score at which a candidate that passed every gate is accepted at once."""
    first: int = Field(1, ge=1)
    """Candidates sampled in the first round."""
    growth: float = Field(2.0, gt=1.0, le=16.0)
    """Each round grows the pool to this many times its size (2: 1, 2, 4, 8, …)."""
    max_candidates: int | None = Field(None, ge=1)
    """Largest pool (default: the request's N; the policy's budget caps it too)."""
    max_total_tokens: int | None = Field(None, ge=1)
    """Stop sampling once the candidates hold this many generated tokens."""
    max_seconds: float | None = Field(None, gt=0.0)
    """Stop sampling once the request has run this long."""


class Adaptive(Strategy):
    """Stop at the first candidate that passes and reaches ``threshold``; else grow N."""

    name = "adaptive"

    Options = AdaptiveOptions
    only_leader_matters = True  # an argmax, or a threshold test on the eligible candidates

    def __init__(self, options: AdaptiveOptions | None = None) -> None:
        self.options = options or AdaptiveOptions()

    def initial_n(self, requested: int) -> int:
        return min(self.options.first, requested, self.options.max_candidates or requested)

    def decide(self, candidates: Sequence[Candidate], state: RoundState) -> Decision:
        o = self.options
        passed = eligible(candidates)
        good = [i for i in passed if reaches(candidates[i].score, o.threshold)]
        if good:
            return Decision(
                argmax_score(candidates, good),
                reason=f"candidate reached {o.threshold:g} after {len(candidates)} samples",
            )
        cap = min(o.max_candidates or state.requested, state.requested)
        room = min(state.budget, cap - len(candidates))
        used = sum(c.tokens for c in candidates)
        spent = (
            "candidates"
            if room <= 0
            else "tokens"
            if o.max_total_tokens is not None and used >= o.max_total_tokens
            else "time"
            if o.max_seconds is not None and state.elapsed_s >= o.max_seconds
            else None
        )
        if spent is not None:
            best = argmax_score(candidates, passed)
            return Decision(
                best,
                reason=f"{spent} budget spent after {len(candidates)} samples; "
                + ("best that passed" if best is not None else "none passed"),
            )
        more = max(1, math.ceil(len(candidates) * (o.growth - 1.0)))
        if o.max_total_tokens is not None and candidates:
            # Keep the next round within the token budget at the mean length so far.
            mean = max(1.0, used / len(candidates))
            more = min(more, max(1, int((o.max_total_tokens - used) / mean)))
        more = min(more, room)
        return Decision(None, more=more, reason=f"none reached {o.threshold:g}; sampling {more}")
