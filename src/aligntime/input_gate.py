"""The input gate: a verdict on the request before any candidate is sampled.

The policy's ``input`` section names scorers that rate the request itself
(:meth:`~aligntime.scorers.base.Scorer.score_request_details`, which reads the
whole conversation, system turns included). They run concurrently, once per
request. Each may carry two thresholds: at or past ``refuse`` nothing is sampled
and the refusal text is returned; at or past ``steer`` the request is sampled
under the section's stricter prompt. The verdict keeps the labels the deciding
scorer gave (a guard's violated categories). One scorer may provide the request's
harm estimate (P(harmful), 0..1), which output scorers that read the assessment
use to tell an appropriate refusal from over-refusal.

With ``steer.offer_refusal`` a steered request also gets the refusal text as one
more candidate (:meth:`InputGate.offered`), scored by the same output scorers. A
steered request is an uncertain one: refusing outright would over-refuse the
benign requests in that band, and a small generator rarely refuses even when told
to, so without it best-of-N has no refusal to choose. A request below the steer
threshold never gets it.

A scorer that sets ``advice: true`` estimates whether the request needs a qualified
professional (medical, mental-health, legal or financial advice about the user's own
situation); the estimate reaches output scorers as ``assessment.advice``. Its
``steer`` threshold may apply a named steer (``steer_with``, from ``input.steers``),
and a steer with ``offer_referral`` adds the section's referral text as a candidate
(``origin: referral``). A request that reaches several steer thresholds is sampled
under the first one's prompt (policy order) and gets every candidate their steers offer.

The gate is a safety check, so it fails closed: an input scorer that raises (with
``on_scorer_error: degrade``) or returns NaN refuses the request. With ``raise``
the failure is a :class:`~aligntime.errors.ScorerError`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from aligntime.errors import ConfigError
from aligntime.policy.schema import InputScorerSpec, InputSpec, SteerSpec
from aligntime.scorers.base import Scorer, as_scorer_error
from aligntime.types import Candidate, Message, RequestAssessment

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputRule:
    """One input scorer with its thresholds, oriented so that ``above`` means riskier."""

    scorer: Scorer
    refuse: float | None
    steer: float | None
    above: bool
    """True: values at or above a threshold act (a risk); False: at or below (a safety score)."""
    harm: bool
    advice: bool = False
    steer_with: str | None = None
    """The named steer (``input.steers``) this rule's ``steer`` threshold applies."""

    @property
    def name(self) -> str:
        return self.scorer.name

    def reaches(self, value: float, threshold: float | None) -> bool:
        """Whether ``value`` is at or past ``threshold`` on the risky side."""
        if threshold is None:
            return False
        return value >= threshold if self.above else value <= threshold


def make_rule(spec: InputScorerSpec, scorer: Scorer, index: int) -> InputRule:
    """The rule for one input scorer; its thresholds must put ``steer`` before ``refuse``."""
    if spec.trigger is not None:
        above = spec.trigger == "above"
    else:
        # P(harmful) and "lower is better" values (P(unsafe), toxicity) are risks.
        above = spec.harm or spec.advice or scorer.direction == "lower"
    if spec.refuse is not None and spec.steer is not None:
        milder = spec.steer < spec.refuse if above else spec.steer > spec.refuse
        if not milder:
            side = "below" if above else "above"
            raise ConfigError(
                f"input.scorers[{index}] ({spec.name!r}): steer ({spec.steer}) must lie {side} "
                f"refuse ({spec.refuse}), since {'higher' if above else 'lower'} values are "
                "riskier",
                hint="set trigger: above (a risk) or below (a safety score) if the default "
                "is wrong",
            )
    return InputRule(
        scorer, spec.refuse, spec.steer, above, spec.harm, spec.advice, spec.steer_with
    )


class InputGate:
    """Runs the input scorers on a request and decides: pass, steer or refuse."""

    def __init__(
        self,
        spec: InputSpec,
        scorers: Sequence[Scorer],
        *,
        on_error: Literal["raise", "degrade"] = "raise",
        fallback: str | None = None,
    ) -> None:
        """``fallback`` is the policy's fallback, the refusal text when the section has none."""
        by_name = {s.name: s for s in scorers}
        missing = [s.name for s in spec.scorers if s.name not in by_name]
        if missing:
            raise ConfigError(f"no input scorer object for {', '.join(map(repr, missing))}")
        self.spec = spec
        self.on_error = on_error
        self.rules = [make_rule(s, by_name[s.name], i) for i, s in enumerate(spec.scorers)]
        self.refusal = spec.refusal or fallback
        """The text a refused request gets (and a steered one is offered, if asked)."""
        self.referral = spec.referral
        """The text a steer with ``offer_referral`` offers (a pointer to qualified help)."""
        self._loaded = False

    @property
    def scorers(self) -> list[Scorer]:
        """The input scorers, in policy order."""
        return [r.scorer for r in self.rules]

    def load(self) -> None:
        """Load every input scorer's model (a failure is raised or, degraded, logged)."""
        if self._loaded:
            return
        for rule in self.rules:
            try:
                rule.scorer.load()
            except Exception as exc:
                if self.on_error == "raise":
                    raise as_scorer_error(rule.scorer, exc) from exc
                # The scorer will fail again when asked, and the gate then refuses.
                log.warning("input scorer %s failed to load: %s", rule.scorer.name, exc)
        self._loaded = True

    async def assess(self, messages: Sequence[Message]) -> RequestAssessment:
        """The verdict on ``messages`` (the whole conversation)."""
        started = time.perf_counter()
        results = await asyncio.gather(
            *(r.scorer.score_request_details(messages) for r in self.rules),
            return_exceptions=True,
        )
        scores: dict[str, float] = {}
        labels: dict[str, tuple[str, ...]] = {}
        failed: list[str] = []
        for rule, detail in zip(self.rules, results, strict=True):
            name = rule.scorer.name
            if isinstance(detail, BaseException):
                if self.on_error == "raise" or not isinstance(detail, Exception):
                    raise as_scorer_error(rule.scorer, detail) from detail
                log.warning("input scorer %s failed; refusing (fail closed): %s", name, detail)
                failed.append(name)
                scores[name] = math.nan
                continue
            scores[name] = float(detail.value)
            labels[name] = tuple(detail.labels)
            if math.isnan(scores[name]):
                log.warning("input scorer %s gave no value; refusing (fail closed)", name)
                failed.append(name)
        return self.decide(scores, tuple(failed), time.perf_counter() - started, labels)

    def decide(
        self,
        scores: dict[str, float],
        failed: tuple[str, ...],
        seconds: float = 0.0,
        labels: Mapping[str, tuple[str, ...]] | None = None,
    ) -> RequestAssessment:
        """The action for these input scores: the first refusing scorer wins, then steering.

        ``labels`` holds what each scorer named as its reasons; the verdict keeps the
        deciding scorer's.
        """
        labels = labels or {}
        harm = self._estimate(scores, failed, "harm")
        advice = self._estimate(scores, failed, "advice")
        if failed:
            return RequestAssessment(
                "refuse", scores, failed[0], harm, failed, seconds, advice=advice
            )
        refusing = next((r for r in self.rules if r.reaches(scores[r.name], r.refuse)), None)
        steering = next((r for r in self.rules if r.reaches(scores[r.name], r.steer)), None)
        rule = refusing or steering
        if rule is None:
            return RequestAssessment("pass", scores, None, harm, (), seconds, advice=advice)
        return RequestAssessment(
            "refuse" if refusing is not None else "steer",
            scores,
            rule.name,
            harm,
            (),
            seconds,
            labels.get(rule.name, ()),
            advice=advice,
            steer=None if refusing is not None else rule.steer_with,
        )

    def _estimate(
        self, scores: Mapping[str, float], failed: tuple[str, ...], which: str
    ) -> float | None:
        """The value of the scorer marked ``harm: true`` or ``advice: true``, clipped to 0..1."""
        rule = next((r for r in self.rules if getattr(r, which)), None)
        if rule is None or rule.name in failed or rule.name not in scores:
            return None
        return min(1.0, max(0.0, scores[rule.name]))

    def offered(self, assessment: RequestAssessment | None) -> list[Candidate]:
        """Candidates the gate adds to a steered request's sampled ones: the refusal text
        when a steer it reached sets ``offer_refusal``, the referral text when one sets
        ``offer_referral``; none for a request that was not steered."""
        if assessment is None or assessment.action != "steer":
            return []
        steers = [self.steer_spec(assessment.steer)]
        for rule in self.rules:
            value = assessment.scores.get(rule.name)
            if value is not None and value == value and rule.reaches(value, rule.steer):
                steers.append(self.steer_spec(rule.steer_with))
        out: list[Candidate] = []
        if self.refusal and any(s is not None and s.offer_refusal for s in steers):
            out.append(Candidate(text=self.refusal, origin="refusal"))
        if self.referral and any(s is not None and s.offer_referral for s in steers):
            out.append(Candidate(text=self.referral, origin="referral"))
        return out

    def steer_spec(self, name: str | None) -> SteerSpec | None:
        """The named steer (``input.steers``), or the section's ``steer`` for ``None``."""
        return self.spec.steer if name is None else self.spec.steers.get(name)

    def close(self) -> None:
        for rule in self.rules:
            rule.scorer.close()
