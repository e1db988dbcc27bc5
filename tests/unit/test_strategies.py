"""Tests of the selection strategies, on hand-made scored candidates."""

from __future__ import annotations

from collections import Counter

import pytest
from pydantic import ValidationError

from aligntime.errors import ConfigError
from aligntime.strategies.base import RoundState
from aligntime.strategies.best_of_n import BestOfN
from aligntime.strategies.passthrough import PassThrough
from aligntime.strategies.rejection import Rejection
from aligntime.strategies.soft import SoftBestOfN
from aligntime.strategies.vote import MajorityVote, extract_answer
from aligntime.types import Candidate


def _state(budget: int, requested: int = 1) -> RoundState:
    """A request of N ``requested`` that may sample ``budget`` more candidates."""
    return RoundState(requested, budget)


def _c(score: float | None, passed: bool = True, text: str = "x") -> Candidate:
    return Candidate(text=text, score=score, passed=passed)


def _scored(*scores: float, passed: tuple[bool, ...] | None = None) -> list[Candidate]:
    flags = passed or (True,) * len(scores)
    return [_c(s, p, f"answer {i}") for i, (s, p) in enumerate(zip(scores, flags, strict=True))]


# --- best_of_n -------------------------------------------------------------------------


def test_best_of_n_picks_highest_passed() -> None:
    cands = _scored(0.2, 0.9, 0.5, passed=(True, False, True))
    decision = BestOfN().decide(cands, _state(10))
    assert decision.best == 2
    assert decision.more == 0
    assert decision.reason


def test_best_of_n_none_passed() -> None:
    decision = BestOfN().decide(_scored(0.9, 0.8, passed=(False, False)), _state(5))
    assert decision.best is None and decision.more == 0


def test_best_of_n_tie_keeps_earliest_and_none_score_is_lowest() -> None:
    assert BestOfN().decide(_scored(0.5, 0.7, 0.7), _state(0)).best == 1
    assert BestOfN().decide([_c(None), _c(0.0)], _state(0)).best == 1
    assert BestOfN().decide([], _state(0)).best is None


def test_best_of_n_rejects_unknown_options() -> None:
    with pytest.raises(ValidationError):
        BestOfN.Options.model_validate({"threshold": 1})


# --- passthrough -----------------------------------------------------------------------


def test_passthrough_samples_one() -> None:
    assert PassThrough().initial_n(5) == 1
    assert PassThrough().initial_n(1) == 1


def test_passthrough_picks_first_if_passed() -> None:
    assert PassThrough().decide(_scored(0.1, 0.9), _state(3)).best == 0
    failed = [Candidate(text="bad", score=0.9, passed=False, gate_failures=("safety",))]
    decision = PassThrough().decide(failed, _state(3))
    assert decision.best is None and decision.more == 0
    assert "safety" in decision.reason
    assert PassThrough().decide([], _state(3)).best is None


# --- rejection -------------------------------------------------------------------------


def test_rejection_accepts_best_above_threshold() -> None:
    strategy = Rejection(Rejection.Options(threshold=0.6))
    cands = _scored(0.7, 0.95, 0.8, 0.4, passed=(True, False, True, True))
    decision = strategy.decide(cands, _state(10))
    assert decision.best == 2 and decision.more == 0


def test_rejection_threshold_is_inclusive() -> None:
    strategy = Rejection(Rejection.Options(threshold=0.5))
    assert strategy.decide(_scored(0.5), _state(4)).best == 0


def test_rejection_asks_for_another_round_then_falls_back() -> None:
    strategy = Rejection(Rejection.Options(threshold=0.8))
    first = _scored(0.1, 0.2, 0.3)
    d1 = strategy.decide(first, RoundState(requested=3, budget=5))
    assert d1.best is None and d1.more == 3
    assert "more" in d1.reason
    second = [*first, *_scored(0.4, 0.5, 0.6)]
    d2 = strategy.decide(second, RoundState(requested=3, budget=2))
    assert d2.best is None and d2.more == 2  # capped by the budget
    third = [*second, *_scored(0.7, 0.75)]
    d3 = strategy.decide(third, RoundState(requested=3, budget=0))
    assert d3.best is None and d3.more == 0
    assert "budget" in d3.reason


def test_rejection_round_size_is_each_requests_own_n() -> None:
    # One strategy object serves concurrent requests with different N.
    strategy = Rejection(Rejection.Options(threshold=0.9))
    four = _scored(0.1, 0.1, 0.1, 0.1)
    assert strategy.decide(four, RoundState(requested=4, budget=100)).more == 4
    assert strategy.decide(_scored(0.1, 0.1), RoundState(requested=2, budget=100)).more == 2
    assert strategy.decide(four, RoundState(requested=4, budget=100)).more == 4


def test_rejection_round_size_defaults_to_the_requests_n() -> None:
    strategy = Rejection(Rejection.Options(threshold=0.9))
    assert strategy.decide(_scored(0.1, 0.1, 0.1), _state(9, requested=3)).more == 3
    assert strategy.decide(_scored(0.1, 0.1), _state(9, requested=2)).more == 2


def test_rejection_explicit_batch() -> None:
    strategy = Rejection(Rejection.Options(threshold=0.9, batch=2))
    assert strategy.decide(_scored(*[0.1] * 8), RoundState(8, budget=10)).more == 2
    assert strategy.decide(_scored(*[0.1] * 8), _state(10)).more == 2
    assert strategy.decide(_scored(*[0.1] * 8), _state(1)).more == 1


def test_rejection_ignores_failed_candidates_above_threshold() -> None:
    strategy = Rejection(Rejection.Options(threshold=0.5))
    cands = _scored(0.99, 0.3, passed=(False, True))
    assert strategy.decide(cands, _state(1)).more == 1
    assert strategy.decide(cands, _state(0)).best is None


def test_rejection_options_are_validated() -> None:
    with pytest.raises(ValidationError):
        Rejection.Options(batch=0)
    with pytest.raises(ValidationError):
        Rejection.Options.model_validate({"treshold": 0.5})


# --- soft best-of-n --------------------------------------------------------------------


def test_soft_none_passed() -> None:
    strategy = SoftBestOfN(SoftBestOfN.Options(seed=1))
    assert strategy.decide(_scored(0.5, 0.9, passed=(False, False)), _state(3)).best is None


def test_soft_small_beta_picks_max() -> None:
    strategy = SoftBestOfN(SoftBestOfN.Options(beta=0.01, seed=7))
    cands = _scored(0.5, 0.9, 0.8, 0.99, passed=(True, True, True, False))
    picks = Counter(strategy.decide(cands, _state(0)).best for _ in range(500))
    assert picks[1] >= 495
    assert 3 not in picks


def test_soft_huge_beta_is_roughly_uniform() -> None:
    strategy = SoftBestOfN(SoftBestOfN.Options(beta=1e6, seed=123))
    cands = _scored(0.0, 0.5, 1.0, 0.2, passed=(True, True, True, False))
    picks = Counter(strategy.decide(cands, _state(0)).best for _ in range(2000))
    assert set(picks) == {0, 1, 2}
    for i in (0, 1, 2):
        assert 2000 / 3 * 0.85 < picks[i] < 2000 / 3 * 1.15


def test_soft_probabilities_follow_boltzmann() -> None:
    strategy = SoftBestOfN(SoftBestOfN.Options(beta=0.5))
    probs = strategy.probabilities(_scored(0.0, 0.5))
    ratio = probs[1] / probs[0]
    assert ratio == pytest.approx(2.718281828, rel=1e-6)
    assert sum(probs.values()) == pytest.approx(1.0)


def test_soft_tiny_beta_does_not_overflow() -> None:
    strategy = SoftBestOfN(SoftBestOfN.Options(beta=1e-9, seed=0))
    probs = strategy.probabilities(_scored(1.0, 0.0, 0.999))
    assert probs[0] == pytest.approx(1.0)
    assert strategy.decide(_scored(1.0, 0.0, 0.999), _state(0)).best == 0


def test_soft_same_seed_same_sequence() -> None:
    cands = _scored(0.2, 0.4, 0.6, 0.5)
    a = SoftBestOfN(SoftBestOfN.Options(beta=0.3, seed=42))
    b = SoftBestOfN(SoftBestOfN.Options(beta=0.3, seed=42))
    seq_a = [a.decide(cands, _state(0)).best for _ in range(50)]
    seq_b = [b.decide(cands, _state(0)).best for _ in range(50)]
    assert seq_a == seq_b
    assert len(set(seq_a)) > 1  # it is actually sampling


def test_soft_missing_scores() -> None:
    strategy = SoftBestOfN(SoftBestOfN.Options(seed=3))
    assert strategy.probabilities([_c(None), _c(0.3)]) == {0: 0.0, 1: 1.0}
    assert strategy.probabilities([_c(None), _c(None)]) == {0: 0.5, 1: 0.5}


def test_soft_beta_must_be_positive() -> None:
    with pytest.raises(ValidationError):
        SoftBestOfN.Options(beta=0.0)


# --- vote ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The total is 1,000.50 dollars.", "1000.5"),
        ("3.0", "3"),
        ("First 12, then 7. So the answer is 42.", "42"),
        ("5-3 = 2", "2"),
        ("It is -4.", "-4"),
        ("x = 1,2,3", "3"),
        ("about .50 each", "0.5"),
        ("-0.0", "0"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extract_number(text: str, expected: str | None) -> None:
    assert extract_answer(text, "number") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Let me think.\nStep 2...\n\n  The answer is PARIS!  \n\n", "the answer is paris"),
        ("**B)**", "b"),
        ("pi is 3.14.", "pi is 3.14"),
        ("\n \n", None),
        ("?!", None),
    ],
)
def test_extract_last_line(text: str, expected: str | None) -> None:
    assert extract_answer(text, "last_line") == expected


def test_extract_text_and_pattern() -> None:
    assert extract_answer("  Hello,   WORLD! ", "text") == "hello world"
    pattern = r"answer:\s*(\S+)"
    text = "answer: 12 ... wait, answer: 1,000.0"
    assert extract_answer(text, "number", pattern) == "1000"
    assert extract_answer("Answer: Blue.", "number", r"Answer: (\w+)") == "blue"
    assert extract_answer("nothing", "number", pattern) is None
    assert extract_answer("x 12 y", "text", r"\d+") == "12"


def _v(text: str, score: float | None = 0.5, passed: bool = True) -> Candidate:
    return Candidate(text=text, score=score, passed=passed)


def test_vote_majority_wins_over_score() -> None:
    cands = [
        _v("... so 7", 0.99),
        _v("The answer is 12.", 0.2),
        _v("12", 0.6),
        _v("I got 12.0", 0.4),
    ]
    decision = MajorityVote().decide(cands, _state(0))
    assert decision.best == 2  # best-scored member of the "12" group
    assert "'12'" in decision.reason


def test_vote_failed_candidates_do_not_vote() -> None:
    cands = [_v("7", 0.3), _v("9", 0.9, passed=False), _v("9", 0.9, passed=False), _v("8", 0.1)]
    assert MajorityVote().decide(cands, _state(0)).best == 0


def test_vote_tie_broken_by_best_score_then_first() -> None:
    cands = [_v("1", 0.5), _v("2", 0.8), _v("1", 0.4), _v("2", 0.1)]
    assert MajorityVote().decide(cands, _state(0)).best == 1
    equal = [_v("1", 0.5), _v("2", 0.5), _v("2", 0.3), _v("1", 0.2)]
    assert MajorityVote().decide(equal, _state(0)).best == 0


def test_vote_none_score_is_lowest_in_group() -> None:
    cands = [_v("4", None), _v("4", 0.1), _v("5", 0.9)]
    assert MajorityVote().decide(cands, _state(0)).best == 1


def test_vote_without_answers_falls_back_to_best_of_n() -> None:
    cands = [_v("no idea", 0.2), _v("cannot say", 0.7), _v("42", 0.9, passed=False)]
    decision = MajorityVote().decide(cands, _state(0))
    assert decision.best == 1
    assert MajorityVote().decide([_v("1", 0.5, passed=False)], _state(0)).best is None


def test_vote_last_line_and_pattern_modes() -> None:
    lines = [_v("work\nParis", 0.1), _v("other\nparis.", 0.2), _v("Lyon", 0.9)]
    strategy = MajorityVote(MajorityVote.Options(extract="last_line"))
    assert strategy.decide(lines, _state(0)).best == 1
    cands = [_v("#### 5 then 9", 0.9), _v("#### 6", 0.1), _v("#### 6 and 5", 0.2)]
    pattern = MajorityVote(MajorityVote.Options(pattern=r"####\s*(\d+)"))
    assert pattern.decide(cands, _state(0)).best == 2


def test_vote_bad_pattern_is_config_error() -> None:
    with pytest.raises(ConfigError, match=r"\(unclosed"):
        MajorityVote(MajorityVote.Options(pattern="(unclosed"))
    with pytest.raises(ConfigError, match="groups"):
        MajorityVote(MajorityVote.Options(pattern=r"(a)(b)"))
    with pytest.raises(ValidationError):
        MajorityVote.Options.model_validate({"extract": "first_word"})


def test_strategy_names() -> None:
    names = [s.name for s in (BestOfN(), Rejection(), SoftBestOfN(), MajorityVote(), PassThrough())]
    assert names == ["best_of_n", "rejection", "soft_best_of_n", "vote", "passthrough"]


# --- gaps found by mutation testing (scripts/mutation.sh) -------------------------------


def test_rejection_later_rounds_are_the_requests_n_not_the_pool_so_far() -> None:
    # After two rounds of a request with N = 4, eight candidates are in the pool:
    # the third round is again 4, not 8 (the pool size), until the budget caps it.
    strategy = Rejection(Rejection.Options(threshold=0.9))
    eight = _scored(*[0.1] * 8)
    assert strategy.decide(eight, RoundState(requested=4, budget=20)).more == 4
    assert strategy.decide(eight, RoundState(requested=4, budget=3)).more == 3
    assert strategy.decide(_scored(0.1), RoundState(requested=5, budget=20)).more == 5


def test_rejection_with_no_candidate_yet_asks_for_one() -> None:
    # Zero candidates must not ask for zero more (the request would end at once).
    decision = Rejection(Rejection.Options(threshold=0.5)).decide([], _state(5))
    assert decision.best is None and decision.more == 1


def test_best_of_n_picks_a_passed_candidate_even_when_none_has_a_score() -> None:
    # Candidates without scores (no weighted scorer) still pass: the first one is shown.
    assert BestOfN().decide([_c(None), _c(None)], _state(0)).best == 0
    assert BestOfN().decide([_c(None, passed=False), _c(None)], _state(0)).best == 1


def test_soft_treats_a_non_finite_score_as_missing() -> None:
    strategy = SoftBestOfN(SoftBestOfN.Options(seed=0))
    assert strategy.probabilities([_c(float("nan")), _c(0.3)]) == {0: 0.0, 1: 1.0}
    assert strategy.probabilities([_c(float("inf")), _c(0.3)]) == {0: 0.0, 1: 1.0}
    picks = {strategy.decide([_c(float("nan")), _c(0.3)], _state(0)).best for _ in range(50)}
    assert picks == {1}


def test_strategies_built_without_options_hold_their_defaults() -> None:
    for cls in (BestOfN, PassThrough, Rejection, SoftBestOfN, MajorityVote):
        assert cls().options == cls.Options(), cls.name  # type: ignore[call-arg]


def test_passthrough_names_every_failed_gate_or_says_a_gate() -> None:
    failed = Candidate(text="bad", score=0.9, passed=False, gate_failures=("safety", "rules"))
    assert "safety, rules" in PassThrough().decide([failed], _state(0)).reason
    anonymous = Candidate(text="bad", score=0.9, passed=False)
    assert PassThrough().decide([anonymous], _state(0)).reason.endswith("failed a gate")


def test_vote_keeps_a_decimal_point_or_comma_only_between_digits() -> None:
    assert extract_answer("3.5", "text") == "3.5"
    assert extract_answer("1,5", "text") == "1,5"
    assert extract_answer(".5", "text") == "5"  # nothing before the point
    assert extract_answer("5.", "text") == "5"  # nothing after it
    assert extract_answer("a.5", "text") == "a 5"
    assert extract_answer("5.a", "text") == "5 a"
    assert extract_answer("x.5.y", "text") == "x 5 y"
    assert extract_answer("7.25 km", "last_line") == "7.25 km"
    assert extract_answer("Answer: 12", "text", r"\d+") == "12"
    # Small numbers in plain digits, never in exponent notation ("1.2E-7").
    assert extract_answer("about 0.00000012 m", "number") == "0.00000012"


def test_vote_accepts_a_compiled_pattern() -> None:
    import re

    assert extract_answer("A) 4  B) 7", "number", re.compile(r"B\) (\d+)")) == "7"


def test_vote_pattern_errors_tell_how_to_fix_them() -> None:
    with pytest.raises(ConfigError) as info:
        MajorityVote(MajorityVote.Options(pattern="(unclosed"))
    assert info.value.hint == "give a Python regular expression with one group around the answer"
    with pytest.raises(ConfigError) as info:
        MajorityVote(MajorityVote.Options(pattern=r"(a)(b)"))
    assert info.value.hint == "use one capturing group around the answer; (?:...) does not capture"


def test_vote_ranks_a_nan_score_below_any_number() -> None:
    # Two groups of one vote each: the tie goes to the group whose best member scores
    # highest, and a NaN (a scorer that failed) is the lowest score, not the highest.
    cands = [_v("1", float("nan")), _v("2", 0.1)]
    assert MajorityVote().decide(cands, _state(0)).best == 1
    assert MajorityVote().decide([_v("2", 0.1), _v("1", float("nan"))], _state(0)).best == 0
