"""Tests of the combination step: gates first, then the weighted normalised score."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from aligntime.scorers.base import Direction, Scorer
from aligntime.scorers.combine import Gate, ScorerWeighting, combine
from aligntime.types import Candidate, Message


class _Static(Scorer):
    """A scorer whose values the test passes to combine() directly."""

    def __init__(
        self, name: str, direction: Direction = "higher", value_range: tuple[float, float] = (0, 1)
    ) -> None:
        self.name = name
        self.direction = direction
        self.value_range = value_range

    async def score(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        raise NotImplementedError


def _w(
    name: str,
    weight: float,
    gate: Gate | None = None,
    direction: Direction = "higher",
    value_range: tuple[float, float] = (0.0, 1.0),
) -> ScorerWeighting:
    return ScorerWeighting(name, weight, gate, _Static(name, direction, value_range))


def _cands(n: int) -> list[Candidate]:
    return [Candidate(text=f"answer {i}") for i in range(n)]


def test_gate_bounds_are_inclusive() -> None:
    gate = Gate(min=0.2, max=0.6)
    assert gate.holds(0.2) and gate.holds(0.6) and gate.holds(0.4)
    assert not gate.holds(0.19) and not gate.holds(0.61)
    assert Gate(max=0.5).holds(-100.0)
    assert Gate(min=0.5).holds(100.0)
    assert Gate().holds(1.0)


def test_gate_nan_never_holds() -> None:
    assert not Gate(max=0.5).holds(math.nan)
    assert not Gate().holds(math.nan)


def test_weighted_mean_of_normalised_values() -> None:
    weightings = [
        _w("reward", 3.0, value_range=(-10.0, 10.0)),
        _w("safety", 1.0, direction="lower"),
    ]
    raw = {"reward": [10.0, 0.0], "safety": [0.0, 1.0]}
    out = combine(_cands(2), raw, weightings)
    # reward 10 -> 1.0, safety 0 (lower is better) -> 1.0
    assert out[0].score == pytest.approx(1.0)
    # reward 0 -> 0.5, safety 1 -> 0.0: (3*0.5 + 1*0) / 4
    assert out[1].score == pytest.approx(0.375)


def test_scores_keep_every_raw_value_including_gate_only() -> None:
    weightings = [_w("quality", 1.0), _w("safety", 0.0, Gate(max=0.5), direction="lower")]
    raw = {"quality": [0.8, 0.4], "safety": [0.1, 0.9]}
    out = combine(_cands(2), raw, weightings)
    assert out[0].scores == {"quality": 0.8, "safety": 0.1}
    assert out[1].scores == {"quality": 0.4, "safety": 0.9}
    # weight 0 does not enter the score
    assert out[0].score == pytest.approx(0.8)
    assert out[1].score == pytest.approx(0.4)
    # ...but its gate still decides: the second answer is too unsafe to show.
    assert out[0].passed and out[0].gate_failures == ()
    assert not out[1].passed and out[1].gate_failures == ("safety",)


def test_gate_failure_keeps_score_but_not_passed() -> None:
    weightings = [_w("quality", 1.0), _w("safety", 0.5, Gate(max=0.5), direction="lower")]
    raw = {"quality": [0.9, 0.9], "safety": [0.2, 0.7]}
    out = combine(_cands(2), raw, weightings)
    assert out[0].passed and out[0].gate_failures == ()
    assert not out[1].passed and out[1].gate_failures == ("safety",)
    assert out[1].score == pytest.approx((0.9 + 0.5 * 0.3) / 1.5)


def test_several_gate_failures_are_all_named() -> None:
    weightings = [_w("a", 1.0, Gate(min=0.5)), _w("b", 1.0, Gate(max=0.1)), _w("c", 1.0)]
    out = combine(_cands(1), {"a": [0.1], "b": [0.9], "c": [0.5]}, weightings)
    assert out[0].gate_failures == ("a", "b")
    assert out[0].passed is False


def test_nan_fails_gate_and_counts_as_zero() -> None:
    weightings = [_w("quality", 1.0), _w("safety", 1.0, Gate(max=0.5), direction="lower")]
    out = combine(_cands(1), {"quality": [1.0], "safety": [math.nan]}, weightings)
    assert not out[0].passed
    assert out[0].gate_failures == ("safety",)
    # NaN on a lower-is-better scorer must not become the best value (1.0).
    assert out[0].score == pytest.approx(0.5)
    assert math.isnan(out[0].scores["safety"])


def test_nan_without_gate_counts_as_zero() -> None:
    weightings = [_w("a", 1.0), _w("b", 1.0)]
    out = combine(_cands(1), {"a": [math.nan], "b": [1.0]}, weightings)
    assert out[0].passed
    assert out[0].score == pytest.approx(0.5)


def test_no_positive_weight_gives_zero() -> None:
    out = combine(_cands(2), {"a": [0.9, 0.1]}, [_w("a", 0.0)])
    assert [c.score for c in out] == [0.0, 0.0]
    out = combine(_cands(1), {}, [])
    assert out[0].score == 0.0 and out[0].passed


def test_values_are_clamped_to_range() -> None:
    out = combine(_cands(2), {"a": [5.0, -5.0]}, [_w("a", 1.0)])
    assert out[0].score == pytest.approx(1.0)
    assert out[1].score == pytest.approx(0.0)


def test_returns_new_candidates_and_keeps_fields() -> None:
    original = Candidate(text="hi", tokens=7, finish_reason="length")
    out = combine([original], {"a": [0.3]}, [_w("a", 1.0)])
    assert original.scores == {} and original.score is None
    assert out[0] is not original
    assert (out[0].text, out[0].tokens, out[0].finish_reason) == ("hi", 7, "length")


def test_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="'a'"):
        combine(_cands(2), {"a": [0.3]}, [_w("a", 1.0)])


def test_new_raw_values_replace_scores_already_on_a_candidate() -> None:
    # A candidate scored before (a partial answer, a replayed record) is judged on the
    # values of this scoring: a stale harmless value must not wave a harmful answer through.
    stale = Candidate(text="now harmful", scores={"safety": 0.0, "judge": 0.7})
    weightings = [_w("quality", 1.0), _w("safety", 0.0, Gate(max=0.5), direction="lower")]
    (out,) = combine([stale], {"quality": [0.6], "safety": [0.9]}, weightings)
    assert out.scores == {"safety": 0.9, "judge": 0.7, "quality": 0.6}
    assert not out.passed and out.gate_failures == ("safety",)


def test_a_gated_scorer_without_a_value_fails_its_gate() -> None:
    # No raw value at all for a gated scorer (it never ran) must not count as a pass,
    # whichever side of the range the gate guards.
    weightings = [
        _w("quality", 1.0),
        _w("safety", 0.0, Gate(max=0.5), direction="lower"),
        _w("relevance", 0.0, Gate(min=0.2)),
    ]
    (out,) = combine(_cands(1), {"quality": [0.9]}, weightings)
    assert not out.passed
    assert out.gate_failures == ("safety", "relevance")
    assert out.score == pytest.approx(0.9)


class _NanNormalise(_Static):
    """A scorer whose own normalise gives NaN for values it cannot place."""

    def normalise(self, value: float) -> float:
        return math.nan if value < 0 else value


def test_a_weighted_scorer_without_a_value_counts_as_worst() -> None:
    weightings = [_w("a", 1.0), _w("b", 1.0), _w("c", 2.0, direction="lower")]
    (out,) = combine(_cands(1), {"a": [1.0]}, weightings)
    assert out.passed
    assert out.score == pytest.approx(0.25)  # (1 + 0 + 2 x 0) / 4
    assert out.scores == {"a": 1.0}


def test_a_nan_from_a_scorers_own_normalise_counts_as_worst() -> None:
    weightings = [_w("a", 1.0), ScorerWeighting("odd", 1.0, None, _NanNormalise("odd"))]
    out = combine(_cands(2), {"a": [1.0, 1.0], "odd": [-1.0, 0.5]}, weightings)
    assert out[0].score == pytest.approx(0.5)
    assert out[1].score == pytest.approx(0.75)
