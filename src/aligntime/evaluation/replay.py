"""Replaying strategies over one recorded pool: what each would choose at each n.

For a pool of ``k`` scored candidates and a grid value ``n <= k``, a
:class:`Choice` gives the probability that each pool candidate is shown, the
probability of the policy's fallback (nothing eligible), and the expected
number of candidates the strategy consumed.

- ``best_of_n`` has a closed form (exact): see :mod:`aligntime.evaluation.metrics`.
  Candidates are ranked the way the strategy ranks them (eligible first, then
  combined score, ties to the earlier candidate), so a subset's top is eligible
  exactly when the subset holds an eligible candidate, and fallback otherwise.
- Every other strategy (``soft_best_of_n``, ``vote``, ``rejection``, ...) is run
  for real: a Monte-Carlo over ``draws`` random orderings of the pool with a
  fixed seed. Each draw hands the first ``initial_n(n)`` candidates of the
  ordering to the strategy's ``decide``; when it asks for more, the next ones
  follow, as the aligner would sample them, up to the policy's budget (capped
  by the pool size: a strategy that wants more than the pool holds stops there).

Candidates the input gate offered (``origin`` other than ``sampled``: a steered
request's refusal) were not drawn from the generator: the aligner adds them to
every request's first round, so they belong to every subset and count neither
towards ``n`` nor towards the pool size.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aligntime.errors import InputError
from aligntime.evaluation.metrics import rank_weights
from aligntime.registry import build, options_model, resolve
from aligntime.strategies.base import SamplingRounds, SearchStrategy, Strategy
from aligntime.strategies.best_of_n import BestOfN
from aligntime.types import Candidate, rank_key


@dataclass(frozen=True)
class Choice:
    """The distribution of one strategy's outcome at one n on one pool."""

    probs: dict[int, float] = field(default_factory=dict)
    """Pool index -> probability that this candidate is shown."""
    fallback: float = 0.0
    """Probability that nothing is eligible and the fallback text is shown."""
    used: float = 0.0
    """Expected number of candidates the strategy consumed (its sampling cost)."""
    used_tokens: float = 0.0
    """Expected tokens generated for the candidates consumed."""


def to_candidates(rows: Sequence[dict[str, Any]]) -> list[Candidate]:
    """Recorded candidate rows back to :class:`Candidate` objects."""
    return [Candidate.from_record(r) for r in rows]


def split_pool(pool: Sequence[Candidate]) -> tuple[list[int], list[int]]:
    """Indices of the sampled candidates and of those the input gate offered."""
    sampled = [i for i, c in enumerate(pool) if c.origin == "sampled"]
    offered = [i for i, c in enumerate(pool) if c.origin != "sampled"]
    return sampled, offered


def make_strategy(kind: str, options: dict[str, Any], seed: int) -> Strategy:
    """A fresh strategy; one whose options take a seed and have none gets ``seed``."""
    model = options_model(resolve("strategy", kind))
    opts = dict(options)
    if model is not None and "seed" in model.model_fields and opts.get("seed") is None:
        opts["seed"] = seed
    strategy: Strategy = build("strategy", kind, opts)
    return strategy


def best_of_n_choice(pool: Sequence[Candidate], n: int) -> Choice:
    """The exact outcome distribution of best-of-n over random n-subsets of the sampled
    candidates of ``pool``, with the offered ones in every subset."""

    def rank(i: int) -> tuple[bool, float, int]:  # ascending: the best first
        passed, score = rank_key(pool[i])
        return (not passed, -score, i)

    sampled, offered = split_pool(pool)
    top_offered = min(offered, key=rank) if offered else None
    probs: dict[int, float] = {}
    fallback = 0.0
    for index, weight in zip(sorted(sampled, key=rank), rank_weights(len(sampled), n), strict=True):
        # The subset's best sampled candidate meets the offered one, present in every subset.
        if top_offered is not None and rank(top_offered) < rank(index):
            index = top_offered
        if pool[index].passed:
            probs[index] = probs.get(index, 0.0) + weight
        else:
            fallback += weight
    mean_tokens = sum(pool[i].tokens for i in sampled) / len(sampled)
    return Choice(probs, fallback, float(n), n * mean_tokens)


def choose(
    kind: str,
    options: dict[str, Any],
    pool: Sequence[Candidate],
    n: int,
    *,
    budget: int,
    draws: int,
    seed: int,
    per_candidate_s: float = 0.0,
    exact: bool = True,
) -> Choice:
    """What strategy ``kind`` shows at ``n`` on ``pool``, as a distribution.

    Plain best-of-n has a closed form (:func:`best_of_n_choice`), used when ``exact``.
    Every other strategy runs for real, a Monte-Carlo over ``draws`` orderings of the
    pool, in the aligner's own rounds (:class:`~aligntime.strategies.base.SamplingRounds`):
    ``initial_n`` first, then ``decide`` with the request's N, the budget left and the
    elapsed time (estimated as ``per_candidate_s`` per candidate).

    Search strategies, which write candidates themselves (partial answers,
    token steps), cannot be replayed from a pool of complete answers.
    """
    cls = resolve("strategy", kind)
    if exact and cls is BestOfN:
        return best_of_n_choice(pool, n)
    if issubclass(cls, SearchStrategy):
        raise InputError(
            f"strategy {kind!r} drives generation itself and cannot be replayed from "
            "recorded candidates",
            hint="evaluate it with the aligner directly (bench/search.py)",
        )
    strategy = make_strategy(kind, options, seed)
    return _monte_carlo(strategy, pool, n, budget, draws, seed, per_candidate_s)


simulate_choice = functools.partial(choose, exact=False)
""":func:`choose` run as a Monte-Carlo for every strategy, best-of-n too (which checks
the Monte-Carlo against the closed form)."""


def _monte_carlo(
    strategy: Strategy,
    pool: Sequence[Candidate],
    n: int,
    budget: int,
    draws: int,
    seed: int,
    per_candidate_s: float,
) -> Choice:
    sampled, offered = split_pool(pool)
    k = len(sampled)
    cap = min(max(budget, n), k)
    rng = random.Random(seed)
    counts: dict[int, int] = {}
    fallbacks = used_total = tokens_total = 0
    for _ in range(draws):
        order = rng.sample(sampled, k)
        rounds = SamplingRounds(strategy, n, cap)
        first = rounds.batch
        used: list[int] = []
        shown: list[int] = []
        while rounds.batch:
            used = order[: len(used) + rounds.batch]
            # As in the aligner, the offered candidates follow the first round's samples.
            shown = [*used[:first], *offered, *used[first:]]
            rounds.after([pool[i] for i in shown], len(used), per_candidate_s * len(used))
        decision = rounds.decision
        used_total += len(used)
        tokens_total += sum(pool[i].tokens for i in used)
        if decision.best is None:
            fallbacks += 1
        else:
            chosen = shown[decision.best]
            counts[chosen] = counts.get(chosen, 0) + 1
    return Choice(
        {i: c / draws for i, c in counts.items()},
        fallbacks / draws,
        used_total / draws,
        tokens_total / draws,
    )


def stable_seed(*parts: object) -> int:
    """A seed from parts that is the same in every process (unlike ``hash``)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
