"""Result → Outcome: what one request's alignment came to, counted in the metrics.

A failing scorer never waves an answer through: a failed gating scorer makes
the fallback the answer (``fail_closed``), a failed input scorer refuses the
request, and every failure is counted per scorer.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from aligntime.errors import ScorerError
from aligntime.server.metrics import Metrics
from aligntime.server.planning import Plan
from aligntime.types import RequestAssessment, Result, Usage

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What the Aligner produced for one request (``result`` is None when it failed closed)."""

    result: Result | None
    usage: Usage
    candidates_generated: int
    scorer_errors: list[str]
    fail_closed: bool
    input: RequestAssessment | None = None
    """The input gate's verdict (``None`` for a policy without a gate, or when the
    request failed closed before the gate gave one)."""


def settled(plan: Plan, result: Result, metrics: Metrics) -> Outcome:
    """The outcome of an alignment that returned, its failures and fallback counted."""
    metrics.observe_result(result)
    failed = sorted(
        {name for c in result.candidates for name, v in c.scores.items() if math.isnan(v)}
    )
    for name in failed:
        metrics.scorer_errors.labels(result.policy, name).inc()
    verdict = result.input
    if verdict is not None and verdict.failed:  # degraded input scorers: refused
        for name in verdict.failed:
            metrics.scorer_errors.labels(result.policy, name).inc()
        failed = sorted({*failed, *verdict.failed})
    if result.refused:
        fail_closed = verdict is not None and bool(verdict.failed)
        reason = "fail_closed" if fail_closed else "input_refused"
    else:
        fail_closed = result.best is None and bool(plan.served.gated.intersection(failed))
        reason = "fail_closed" if fail_closed else "no_eligible_candidate"
    if result.best is None:
        metrics.fallbacks.labels(result.policy, reason).inc()
    return Outcome(result, result.usage, len(result.candidates), failed, fail_closed, verdict)


def scorer_failed(
    plan: Plan, exc: ScorerError, usage: Usage, generated: int, metrics: Metrics
) -> Outcome | None:
    """The outcome when a scorer raised: refused (an input scorer), the fallback (a
    policy with gates), or ``None`` when nothing stands in and the request must fail."""
    policy = plan.served.policy.name
    metrics.scorer_errors.labels(policy, exc.scorer).inc()
    if exc.scorer in plan.served.inputs and exc.scorer not in plan.served.gated:
        # The gate cannot say the request is safe: refused, as a degraded gate refuses.
        log.warning("input scorer %s failed; refusing (fail closed): %s", exc.scorer, exc.message)
        verdict = RequestAssessment(
            "refuse", {exc.scorer: math.nan}, exc.scorer, None, failed=(exc.scorer,)
        )
        metrics.input_actions.labels(policy, "refuse").inc()
        metrics.fallbacks.labels(policy, "fail_closed").inc()
        return Outcome(None, usage, generated, [exc.scorer], True, verdict)
    if plan.served.gated:
        # A broken check must not wave an answer through: the fallback, flagged.
        log.warning("scorer %s failed; failing closed: %s", exc.scorer, exc.message)
        metrics.fallbacks.labels(policy, "fail_closed").inc()
        return Outcome(None, usage, generated, [exc.scorer], True)
    return None
