"""Estimators of the evaluation harness, checked against brute force."""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest

from aligntime.evaluation.metrics import (
    Interval,
    auc,
    average_ranks,
    credit,
    expectation,
    expected_max,
    kl_bound,
    mean_ci,
    rank_weights,
    spearman,
    win_rate_vs_single,
)
from aligntime.evaluation.replay import best_of_n_choice, choose, simulate_choice
from aligntime.strategies.base import RoundState
from aligntime.strategies.best_of_n import BestOfN
from aligntime.types import Candidate


def brute_expected_max(values: list[float], n: int) -> float:
    subsets = list(itertools.combinations(values, n))
    return sum(max(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("k", [1, 2, 5, 8])
def test_expected_max_matches_enumeration_of_all_subsets(k: int) -> None:
    rng = random.Random(k)
    values = [round(rng.uniform(-1, 1), 3) for _ in range(k)]
    for n in range(1, k + 1):
        assert expected_max(values, n) == pytest.approx(brute_expected_max(values, n))


def test_expected_max_with_ties_and_edges() -> None:
    values = [0.2, 0.2, 0.7, 0.7, 0.1]
    for n in range(1, 6):
        assert expected_max(values, n) == pytest.approx(brute_expected_max(values, n))
    assert expected_max(values, 1) == pytest.approx(sum(values) / 5)  # n = 1 is the mean
    assert expected_max(values, 5) == pytest.approx(0.7)  # n = k is the max


def test_rank_weights_are_a_distribution_and_reject_bad_n() -> None:
    for k in range(1, 10):
        for n in range(1, k + 1):
            assert sum(rank_weights(k, n)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="1 <= n <= k"):
        rank_weights(3, 4)
    with pytest.raises(ValueError):
        rank_weights(3, 0)


def test_kl_bound_values() -> None:
    assert kl_bound(1) == 0.0
    assert kl_bound(2) == pytest.approx(math.log(2) - 0.5)
    assert kl_bound(4) == pytest.approx(math.log(4) - 0.75)
    assert kl_bound(16) == pytest.approx(math.log(16) - 15 / 16)
    values = [kl_bound(n) for n in range(1, 40)]
    assert values == sorted(values)  # grows with n
    with pytest.raises(ValueError):
        kl_bound(0)


def test_mean_ci_bootstrap_covers_the_mean_and_is_reproducible() -> None:
    rng = random.Random(0)
    xs = [rng.gauss(1.0, 0.5) for _ in range(200)]
    ci = mean_ci(xs, seed=3)
    assert ci.low < ci.mean < ci.high
    assert ci == mean_ci(xs, seed=3)
    # The bootstrap width is close to the normal approximation's (2 x 1.96 standard
    # errors) on this much data.
    normal_width = 2 * 1.959964 * statistics.stdev(xs) / math.sqrt(len(xs))
    assert (ci.high - ci.low) == pytest.approx(normal_width, rel=0.2)
    assert ci.low < 1.0 < ci.high


def test_mean_ci_edge_cases() -> None:
    one = mean_ci([0.4])
    assert (one.mean, one.low, one.high) == (0.4, 0.4, 0.4)
    assert math.isnan(mean_ci([]).mean)
    assert mean_ci([1.0, math.nan, 3.0]).mean == 2.0  # NaN dropped
    constant = mean_ci([0.5] * 10)
    assert constant.low == constant.high == 0.5


def test_credit_win_rate_auc_spearman() -> None:
    assert credit(1, 0) == 1.0 and credit(0, 0) == 0.5 and credit(0, 1) == 0.0
    assert credit(math.nan, 0.0) == 0.0 and credit(0.0, math.nan) == 1.0
    assert win_rate_vs_single(0.5, [0.0, 0.5, 1.0]) == pytest.approx(0.5)
    assert auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert auc([0.1], [0.9]) == 0.0
    assert auc([0.5, 0.5], [0.5]) == 0.5
    assert auc([0.3, 0.9], [0.5]) == 0.5
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def _pool(scores: list[float], passed: list[bool]) -> list[Candidate]:
    return [
        Candidate(text=f"answer {i}", tokens=10 + i, score=s, passed=p)
        for i, (s, p) in enumerate(zip(scores, passed, strict=True))
    ]


def _brute_best_of_n(pool: list[Candidate], n: int) -> tuple[dict[int, float], float]:
    """Run the real BestOfN.decide on every n-subset, in every subset's original order."""
    strategy = BestOfN()
    probs: dict[int, float] = {}
    fallback = 0.0
    subsets = list(itertools.combinations(range(len(pool)), n))
    for subset in subsets:
        decision = strategy.decide([pool[i] for i in subset], RoundState(n, 0))
        if decision.best is None:
            fallback += 1 / len(subsets)
        else:
            chosen = subset[decision.best]
            probs[chosen] = probs.get(chosen, 0.0) + 1 / len(subsets)
    return probs, fallback


def test_best_of_n_closed_form_matches_the_strategy_on_every_subset() -> None:
    pool = _pool([0.9, 0.3, 0.3, 0.95, 0.5, 0.1], [True, True, True, False, True, False])
    for n in range(1, len(pool) + 1):
        choice = best_of_n_choice(pool, n)
        probs, fallback = _brute_best_of_n(pool, n)
        assert choice.fallback == pytest.approx(fallback)
        for i in range(len(pool)):
            assert choice.probs.get(i, 0.0) == pytest.approx(probs.get(i, 0.0)), (n, i)
        assert choice.used == n
        assert choice.used_tokens == pytest.approx(n * sum(c.tokens for c in pool) / len(pool))


def test_monte_carlo_replay_of_best_of_n_agrees_with_the_closed_form() -> None:
    pool = _pool([0.9, 0.3, 0.6, 0.95, 0.5], [True, True, True, False, True])
    for n in (1, 2, 4):
        exact = best_of_n_choice(pool, n)
        mc = simulate_choice("best_of_n", {}, pool, n, budget=n, draws=4000, seed=1)
        assert mc.fallback == pytest.approx(exact.fallback, abs=0.03)
        for i in range(len(pool)):
            assert mc.probs.get(i, 0.0) == pytest.approx(exact.probs.get(i, 0.0), abs=0.03)


def test_rejection_replay_resamples_within_the_budget() -> None:
    # Only candidate 4 reaches the threshold; rejection keeps sampling until it is drawn.
    pool = _pool([0.1, 0.2, 0.3, 0.2, 0.9, 0.1], [True] * 6)
    choice = choose("rejection", {"threshold": 0.5}, pool, 1, budget=6, draws=500, seed=0)
    assert choice.probs == {4: 1.0}
    assert 1.0 < choice.used <= 6.0
    capped = choose("rejection", {"threshold": 0.5}, pool, 1, budget=2, draws=500, seed=0)
    assert capped.used <= 2.0
    assert 0.0 < capped.fallback < 1.0  # sometimes the budget runs out first


def test_soft_replay_is_reproducible_with_a_seed() -> None:
    pool = _pool([0.9, 0.3, 0.6, 0.5], [True] * 4)
    a = choose("soft_best_of_n", {}, pool, 2, budget=2, draws=300, seed=5)
    b = choose("soft_best_of_n", {}, pool, 2, budget=2, draws=300, seed=5)
    assert a == b
    assert sum(a.probs.values()) == pytest.approx(1.0)


# --- gaps found by mutation testing (scripts/mutation.sh) -------------------------------


def test_interval_to_dict_rounds_to_six_places_and_keeps_nan() -> None:
    d = Interval(0.1234567891, math.nan, -2.0000004).to_dict()
    assert list(d) == ["mean", "low", "high"]
    assert d["mean"] == 0.123457 and d["high"] == -2.0
    assert math.isnan(d["low"])


def test_mean_ci_defaults_are_2000_resamples_at_95_percent_with_seed_0() -> None:
    rng = random.Random(4)
    xs = [rng.uniform(0, 1) for _ in range(30)]
    assert mean_ci(xs) == mean_ci(xs, level=0.95, resamples=2000, seed=0)
    assert mean_ci(xs) != mean_ci(xs, seed=1)


def test_mean_ci_of_nothing_is_nan_throughout() -> None:
    empty = mean_ci([math.nan])
    assert math.isnan(empty.mean) and math.isnan(empty.low) and math.isnan(empty.high)


def test_mean_ci_of_two_values_has_a_spread() -> None:
    ci = mean_ci([0.0, 1.0])
    assert ci.mean == 0.5
    assert ci.low == 0.0 and ci.high == 1.0


def test_mean_ci_endpoints_are_the_bootstrap_quantiles() -> None:
    # Resampling [0, 1] twice gives a mean of 0, 0.5 or 1 with probabilities 1/4,
    # 1/2, 1/4. At level 0.4 the interval runs from the 30% to the 70% quantile of
    # those means: 0.5 at both ends (0 holds only 25% of the mass).
    assert mean_ci([0.0, 1.0], level=0.4) == Interval(0.5, 0.5, 0.5)
    # At level 0.6 (20% and 80% quantiles) it spans all three values' ends.
    assert mean_ci([0.0, 1.0], level=0.6) == Interval(0.5, 0.0, 1.0)


@pytest.mark.parametrize("resamples", [2, 41, 2000, 2001])
def test_mean_ci_is_equal_tailed(resamples: int) -> None:
    # Negating the data negates every bootstrap mean (same seed, same draws), so an
    # equal-tailed interval of -x is exactly minus the interval of x, reversed.
    rng = random.Random(resamples)
    xs = [rng.gauss(0.0, 1.0) for _ in range(25)]
    for level in (0.95, 0.5):
        ci = mean_ci(xs, level=level, resamples=resamples, seed=7)
        neg = mean_ci([-x for x in xs], level=level, resamples=resamples, seed=7)
        assert (neg.low, neg.high) == (-ci.high, -ci.low)
        assert ci.low < ci.high


def test_error_messages_name_the_problem() -> None:
    with pytest.raises(ValueError, match="n must be at least 1, got 0"):
        kl_bound(0)
    with pytest.raises(ValueError, match=r"^spearman needs two sequences of equal length$"):
        spearman([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        expectation([0.5, 0.5], [1.0])


def test_credit_of_two_nans_is_a_tie() -> None:
    assert credit(math.nan, math.nan) == 0.5


def test_auc_without_positives_or_negatives_is_nan() -> None:
    assert math.isnan(auc([], [0.5]))
    assert math.isnan(auc([0.5], []))


def test_average_ranks_share_ties() -> None:
    assert average_ranks([1.0, 1.0, 2.0]) == [1.5, 1.5, 3.0]
    assert average_ranks([3.0, 1.0, 3.0, 3.0, 0.0]) == [4.0, 2.0, 4.0, 4.0, 1.0]
    assert average_ranks([]) == []


def test_spearman_small_and_constant_inputs() -> None:
    assert spearman([1.0, 2.0], [5.0, 9.0]) == pytest.approx(1.0)
    assert math.isnan(spearman([1.0], [1.0]))
    assert math.isnan(spearman([1.0, 2.0, 3.0], [4.0, 4.0, 4.0]))
    assert spearman([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]) == pytest.approx(0.8)


def test_expectation_is_the_weighted_sum() -> None:
    assert expectation([0.25, 0.75], [2.0, 4.0]) == pytest.approx(3.5)
    assert expectation([], []) == 0.0
