"""Estimators for evaluation: best-of-n from one pool, confidence intervals, the KL bound.

One pool of ``k`` candidates per prompt serves every ``n <= k``. Best-of-n
picks the top of a random ``n``-subset; the top of a subset is the candidate of
rank ``r`` (1 = best of the pool) exactly when it is in the subset and the
other ``n - 1`` members all rank below it, so

    P(rank r is chosen) = C(k - r, n - 1) / C(k, n)

and the expected value of any quantity of the chosen answer is the weighted
sum of that quantity over the pool. With values sorted ascending this is the
familiar unbiased estimator of E[max of n]: ``sum_i C(i-1, n-1) / C(k, n) x_(i)``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass


def rank_weights(k: int, n: int) -> list[float]:
    """P(the candidate of rank r is the best of a random n-subset), for r = 1..k."""
    if not 1 <= n <= k:
        raise ValueError(f"need 1 <= n <= k, got n={n}, k={k}")
    total = math.comb(k, n)
    return [math.comb(k - r, n - 1) / total for r in range(1, k + 1)]


def expected_max(values: Sequence[float], n: int) -> float:
    """Unbiased estimate of E[max of n draws] from ``k >= n`` draws (without replacement)."""
    ordered = sorted(values, reverse=True)
    return sum(w * x for w, x in zip(rank_weights(len(ordered), n), ordered, strict=True))


def kl_bound(n: int) -> float:
    """The analytic KL(best-of-n || base) bound: ``log n - (n - 1) / n`` (nats)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return math.log(n) - (n - 1) / n


@dataclass(frozen=True)
class Interval:
    """A mean with a confidence interval."""

    mean: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"mean": _r(self.mean), "low": _r(self.low), "high": _r(self.high)}


def mean_ci(
    values: Sequence[float],
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """Mean of per-prompt values with a percentile bootstrap interval over prompts.

    Prompts are the unit of resampling because the candidates of one prompt are
    not independent. NaN values are dropped. With fewer than two values the
    interval collapses to the mean (no spread can be estimated); with no values
    everything is NaN.
    """
    xs = [v for v in values if not math.isnan(v)]
    if not xs:
        return Interval(math.nan, math.nan, math.nan)
    mean = sum(xs) / len(xs)
    if len(xs) < 2:
        return Interval(mean, mean, mean)
    rng = random.Random(seed)
    size = len(xs)
    means = sorted(sum(rng.choices(xs, k=size)) / size for _ in range(resamples))
    alpha = (1.0 - level) / 2.0
    low = means[math.floor(alpha * (resamples - 1))]
    high = means[math.ceil((1.0 - alpha) * (resamples - 1))]
    return Interval(mean, low, high)


def credit(a: float, b: float) -> float:
    """1 if a beats b, 0.5 on a tie, 0 if it loses (NaN never wins and never ties)."""
    if math.isnan(a) or math.isnan(b):
        return 0.5 if math.isnan(a) and math.isnan(b) else (0.0 if math.isnan(a) else 1.0)
    return 1.0 if a > b else 0.5 if a == b else 0.0


def win_rate_vs_single(value: float, pool: Sequence[float]) -> float:
    """How often ``value`` beats one candidate drawn at random from ``pool`` (ties half)."""
    if not pool:
        return math.nan
    return sum(credit(value, x) for x in pool) / len(pool)


def auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """ROC AUC: P(a random positive scores above a random negative), ties counted half."""
    if not positives or not negatives:
        return math.nan
    ranked = average_ranks([*positives, *negatives])
    pos_rank_sum = sum(ranked[: len(positives)])
    p, q = len(positives), len(negatives)
    return (pos_rank_sum - p * (p + 1) / 2) / (p * q)


def average_ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks of ``values``, ties sharing their average rank."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for t in range(i, j + 1):
            ranks[order[t]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson on average ranks); NaN when either is constant."""
    if len(xs) != len(ys):
        raise ValueError("spearman needs two sequences of equal length")
    if len(xs) < 2:
        return math.nan
    return _pearson(average_ranks(xs), average_ranks(ys))


def _pearson(xs: Sequence[float], ys: Sequence[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return math.nan
    return sxy / math.sqrt(sxx * syy)


def expectation(weights: Sequence[float], values: Sequence[float]) -> float:
    """``sum(w * v)``: the expected value under per-candidate choice probabilities."""
    return sum(w * v for w, v in zip(weights, values, strict=True))


def _r(x: float) -> float:
    return x if math.isnan(x) else round(x, 6)
