"""Combine raw scorer values into one verdict per candidate.

Two steps, in this order:

1. **Gates.** A scorer may carry a :class:`Gate`: bounds (inclusive) its raw
   value must stay within. A candidate passes when every gate holds; a NaN raw
   value (a scorer that failed) never holds, so a broken safety check cannot
   wave an answer through. Failed gates are listed in ``gate_failures`` by
   scorer name, followed by the labels the scorer gave for that candidate when it
   gave any (``guard (S1 Violent Crimes, S10 Hate)``). An empty or
   whitespace-only answer fails the implicit gate ``empty``: it is never chosen,
   whatever the scorers think of it. When the request asked for a shape
   (``params``: a ``response_format``, ``tools``), a complete answer that does not
   have it fails the implicit gate ``response_format`` or ``tools``
   (:func:`shape_failures`); an answer that calls tools is not ``empty``.
2. **Weighted score.** Each raw value is mapped to [0, 1] (1 best) by its
   scorer's :meth:`~aligntime.scorers.base.Scorer.normalise`, and the combined
   ``score`` is the weighted mean ``sum(w * norm) / sum(w)`` over scorers with
   weight > 0. A NaN normalised value counts as 0 for its scorer (a missing
   score must not help a candidate). With no positive weight, ``score`` is 0.0.

A candidate that fails a gate keeps its combined score, so reports can show how
good it would have been, but ``passed`` is False and strategies skip it.
Every raw value is kept in ``scores``, including those of gate-only scorers
(weight 0). A scorer that did not rate a candidate (a ``lazy`` scorer that skipped
one that could no longer be chosen, see :func:`contenders`) has no key there: an
absent value counts as 0 like a NaN one, but NaN alone means the scorer failed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from aligntime import structured, tools
from aligntime.scorers.base import Scorer
from aligntime.types import Candidate, GenerationParams


@dataclass(frozen=True)
class Gate:
    """Raw-value bounds (inclusive) a candidate must satisfy to be eligible."""

    min: float | None = None
    max: float | None = None

    def holds(self, value: float) -> bool:
        """Whether ``value`` lies within the bounds; NaN never does."""
        if math.isnan(value):
            return False
        if self.min is not None and value < self.min:
            return False
        return not (self.max is not None and value > self.max)


@dataclass(frozen=True)
class ScorerWeighting:
    """How one scorer counts: its weight in the combined score and its optional gate."""

    name: str
    weight: float
    gate: Gate | None
    scorer: Scorer


EMPTY = "empty"
"""The implicit gate an empty (or whitespace-only) answer fails."""


def gate_failure(name: str, labels: Sequence[str] = ()) -> str:
    """A ``gate_failures`` entry: the scorer's name, then its labels in parentheses."""
    return f"{name} ({', '.join(labels)})" if labels else name


def shape_failures(candidate: Candidate, params: GenerationParams) -> tuple[str, ...]:
    """The implicit gates a complete ``candidate`` fails for the shape ``params`` ask for.

    A partial answer (a search strategy's, a stream's window) is not judged: it has
    not had the chance to close its JSON. Calls are checked against the request's
    tools; an answer without calls against its ``response_format``.
    """
    if candidate.state != "complete":
        return ()
    found: list[str] = []
    offered = params.tools
    if offered is not None or candidate.tool_calls:
        reasons = (
            offered.failures(candidate.tool_calls)
            if offered is not None
            else ("the request offered no tools",)
        )
        if reasons:
            found.append(gate_failure(tools.GATE, reasons))
    shape = params.response_format
    if shape is not None and not candidate.tool_calls:
        reasons = shape.failures(candidate.text)
        if reasons:
            found.append(gate_failure(structured.GATE, reasons))
    return tuple(found)


def combine(
    candidates: Sequence[Candidate],
    raw: Mapping[str, Sequence[float | None]],
    weightings: Sequence[ScorerWeighting],
    labels: Mapping[str, Sequence[Sequence[str]]] | None = None,
    *,
    params: GenerationParams | None = None,
) -> list[Candidate]:
    """Return new candidates with ``scores``, ``score``, ``passed`` and ``gate_failures`` set.

    ``raw`` maps each scorer name to one raw value per candidate, in the order of
    ``candidates``; ``None`` means the scorer did not rate that candidate (it was
    skipped, not failed): the name is then absent from its ``scores`` (an earlier value
    under that name is dropped, as it was not given for this scoring), and it counts
    as 0 in the weighted mean. Scores already on a candidate are kept unless a scorer
    of the same name overrides them. ``labels`` maps a scorer name to the labels it gave
    each candidate (:class:`~aligntime.types.ScoreDetail`); a failed gate names them.
    ``params`` are the request's: the shape they ask for is an implicit gate.
    """
    labels = labels or {}
    for name, values in [*raw.items(), *labels.items()]:
        if len(values) != len(candidates):
            raise ValueError(
                f"scorer {name!r} has {len(values)} values for {len(candidates)} candidates"
            )
    weighted = [w for w in weightings if w.weight > 0]
    total_weight = sum(w.weight for w in weighted)

    combined: list[Candidate] = []
    for i, cand in enumerate(candidates):
        scores = dict(cand.scores)
        for name, values in raw.items():
            value = values[i]
            if value is None:
                scores.pop(name, None)
            else:
                scores[name] = float(value)

        failures = tuple(
            gate_failure(w.name, labels[w.name][i] if w.name in labels else ())
            for w in weightings
            if w.gate is not None and not w.gate.holds(scores.get(w.name, math.nan))
        )
        if params is not None:
            failures = (*shape_failures(cand, params), *failures)
        if not cand.text.strip() and not cand.tool_calls:
            failures = (EMPTY, *failures)

        score = 0.0
        if total_weight > 0:
            acc = 0.0
            for w in weighted:
                # Scorer.normalise maps a missing (NaN) raw value to 0; the guard covers
                # scorers that override normalise and return NaN themselves.
                norm = w.scorer.normalise(scores.get(w.name, math.nan))
                acc += w.weight * (0.0 if math.isnan(norm) else norm)
            score = acc / total_weight

        combined.append(
            replace(cand, scores=scores, score=score, passed=not failures, gate_failures=failures)
        )
    return combined


SLACK = 1e-9
"""Added to a skipped candidate's reach, so that float rounding in the weighted mean
can never make a skip inexact (it only keeps a few more candidates in the running)."""


def contenders(candidates: Sequence[Candidate], reach: float) -> list[int]:
    """Indices of the eligible candidates that an argmax could still choose.

    ``candidates`` are combined without some positive-weight scorers (counted as 0),
    whose weights sum to ``reach`` times the total weight: those scorers can add at
    most ``reach`` to any candidate's score. The leader is the eligible candidate with
    the highest score; a candidate whose score plus ``reach`` stays below the leader's
    can never overtake it, so it is left out. The leader itself is always in. Nothing
    eligible: none (gates settle eligibility before, so an ineligible candidate never
    becomes a contender).
    """
    passed = [i for i, c in enumerate(candidates) if c.passed]
    partial = {i: _known(candidates[i].score) for i in passed}
    if not partial:
        return []
    lead = max(partial.values())
    return [i for i in passed if partial[i] + reach + SLACK >= lead]


def _known(score: float | None) -> float:
    """A combined score as a number; missing or NaN (never after :func:`combine`) as 0."""
    return 0.0 if score is None or math.isnan(score) else score
