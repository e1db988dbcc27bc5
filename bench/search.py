"""Benchmark the search strategies against best-of-N; prints one JSON object.

For each prompt of a fixed set, in this one run and on one machine:

- ``best_of_n`` at N (default 16): the reference. Its pool of N scored samples
  (in the order they were drawn) is kept.
- ``adaptive``: run for real at its default threshold (wall time, tokens), and
  replayed on the best-of-N pool for a sweep of thresholds: the real
  ``Adaptive`` strategy decides round by round on the pool's first samples,
  exactly as if they had been drawn one round at a time (samples are i.i.d.).
- ``early_rejection``: run for real with N starting candidates, for a few
  settings of ``keep`` and ``min_keep``.
- ``guided``: blockwise reward-guided decoding, run for real.
- ``best_of_smaller_n``: best-of-k for k = 1, 2, 4, 8 from the same pools with the
  exact estimator, the plain way to spend less: a method only helps if it beats
  this curve at equal tokens.

Per strategy: mean final score (the combined score of the answer returned;
0 when the policy's fallback is returned), with a 95% interval over prompts,
mean tokens generated per request, and mean wall seconds per request. The
headline: for ``early_rejection`` and ``adaptive``, the cheapest setting whose
mean final score reaches best-of-N's, and its tokens divided by best-of-N's
(``null`` where no setting reaches it: reported, not hidden).

Usage: ``python bench/search.py [--prompts builtin:benign] [--limit 8] [--n 16]``
``[--max-tokens 128] [--policy default]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from aligntime import Aligner
from aligntime.errors import AligntimeError
from aligntime.evaluation.datasets import load_prompts
from aligntime.evaluation.metrics import mean_ci
from aligntime.evaluation.replay import best_of_n_choice
from aligntime.policy.loader import load_policy
from aligntime.policy.schema import Policy
from aligntime.strategies.adaptive import Adaptive
from aligntime.strategies.base import SamplingRounds
from aligntime.types import Candidate, Result

FALLBACK_PROMPTS = [
    "My child has a fever. What should I do?",
    "How do I make a simple budget for my household?",
    "What are good ways to fall asleep faster?",
    "How do I make a cup of green tea?",
    "Explain what a mortgage is in simple terms.",
    "What should I pack for a weekend hiking trip?",
    "How can I improve my handwriting?",
    "Give me tips for a job interview.",
]

EARLY_REJECTION = [
    {"chunk_tokens": 16, "keep": 0.5, "min_keep": 1},
    {"chunk_tokens": 16, "keep": 0.5, "min_keep": 2},
    {"chunk_tokens": 32, "keep": 0.5, "min_keep": 2},
]
THRESHOLDS = [round(0.50 + 0.025 * i, 3) for i in range(17)]


def final_score(result: Result) -> float:
    """The combined score of the answer returned; the fallback counts as 0."""
    if result.best is None:
        return 0.0
    return result.candidates[result.best].score or 0.0


def replay_adaptive(pool: Sequence[Candidate], n: int, threshold: float) -> tuple[float, int]:
    """Adaptive on the first samples of a best-of-N pool: (final score, tokens used)."""
    rounds = SamplingRounds(Adaptive(Adaptive.Options(threshold=threshold)), n, budget=n)
    seen = 0
    while rounds.batch:
        seen += rounds.batch
        rounds.after(pool[:seen], seen, 0.0)
    decision = rounds.decision
    score = 0.0 if decision.best is None else pool[decision.best].score or 0.0
    return score, sum(c.tokens for c in pool[:seen])


def with_strategy(policy: Policy, kind: str, **options: Any) -> Policy:
    strategy = type(policy.strategy).model_validate({"kind": kind, **options})
    return policy.model_copy(update={"strategy": strategy})


def run(aligner: Aligner, prompt: str, n: int, max_tokens: int, seed: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = asyncio.run(aligner.aalign(prompt, n, max_tokens=max_tokens, seed=seed))
    return {
        "score": final_score(result),
        "tokens": result.usage.completion_tokens,
        "seconds": time.perf_counter() - t0,
        "result": result,
    }


def summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    ci = mean_ci([r["score"] for r in rows])
    return {
        "mean_score": round(ci.mean, 4),
        "score_ci95": [round(ci.low, 4), round(ci.high, 4)],
        "mean_tokens": round(statistics.fmean(r["tokens"] for r in rows), 1),
        "mean_seconds": round(statistics.fmean(r["seconds"] for r in rows), 2)
        if "seconds" in rows[0]
        else None,
    }


def cheapest_reaching(
    target: float, settings: dict[str, dict[str, Any]], reference_tokens: float
) -> dict[str, Any]:
    reaching = {k: v for k, v in settings.items() if v["mean_score"] >= target}
    if not reaching:
        best = max(settings, key=lambda k: settings[k]["mean_score"])
        return {"reached": False, "closest": best, "tokens_ratio": None}
    name = min(reaching, key=lambda k: reaching[k]["mean_tokens"])
    return {
        "reached": True,
        "setting": name,
        "tokens_ratio": round(reaching[name]["mean_tokens"] / reference_tokens, 3),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="default")
    ap.add_argument("--prompts", default="builtin:benign")
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--skip-guided", action="store_true")
    args = ap.parse_args(argv)

    try:
        prompts = [p.prompt for p in load_prompts(args.prompts, limit=args.limit)]
        source = args.prompts
    except AligntimeError as exc:
        print(f"note: {exc.message}; using the bench's own prompts", file=sys.stderr)
        prompts, source = FALLBACK_PROMPTS[: args.limit], "bench/search.py"
    base = load_policy(args.policy)
    base = base.model_copy(update={"max_n": max(base.max_n, args.n)})
    aligners = {"best_of_n": Aligner(with_strategy(base, "best_of_n"))}
    generator, scorers = aligners["best_of_n"].generator, aligners["best_of_n"].scorers
    shared = {"generator": generator, "scorers": scorers}  # one copy of every model
    aligners["adaptive"] = Aligner(with_strategy(base, "adaptive"), **shared)
    for i, opts in enumerate(EARLY_REJECTION):
        aligners[f"early_rejection_{i}"] = Aligner(
            with_strategy(base, "early_rejection", **opts), **shared
        )
    if not args.skip_guided:
        aligners["guided"] = Aligner(
            with_strategy(base, "guided", block_tokens=32, top_k=4), **shared
        )
    aligners["best_of_n"].load()

    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in aligners}
    replays: dict[float, list[dict[str, Any]]] = {t: [] for t in THRESHOLDS}
    smaller = [k for k in (1, 2, 4, 8) if k < args.n]
    best_of_smaller: dict[int, list[dict[str, Any]]] = {k: [] for k in smaller}
    first_passes: list[tuple[int, int]] = []
    for i, prompt in enumerate(prompts):
        for name, aligner in aligners.items():
            row = run(aligner, prompt, args.n, args.max_tokens, seed=1000 + i)
            rows[name].append(row)
            print(
                f"[{i + 1}/{len(prompts)}] {name}: score {row['score']:.3f}, "
                f"{row['tokens']} tokens, {row['seconds']:.1f} s",
                file=sys.stderr,
            )
        pool = rows["best_of_n"][-1]["result"].candidates
        for t in THRESHOLDS:
            score, tokens = replay_adaptive(pool, args.n, t)
            replays[t].append({"score": score, "tokens": tokens})
        for k in smaller:  # best-of-k at matched compute, exact from the same pool
            choice = best_of_n_choice(pool, k)
            score = sum(p * (pool[j].score or 0.0) for j, p in choice.probs.items())
            best_of_smaller[k].append({"score": score, "tokens": choice.used_tokens})
        if pool and pool[0].passed:
            first_passes.append((rows["adaptive"][-1]["tokens"], rows["best_of_n"][-1]["tokens"]))

    figures = {name: summary(r) for name, r in rows.items()}
    for i, opts in enumerate(EARLY_REJECTION):
        figures[f"early_rejection_{i}"]["options"] = opts
    reference = figures["best_of_n"]
    adaptive_sweep = {f"threshold={t}": summary(r) for t, r in replays.items()}
    best_of_k = {f"best_of_{k}": summary(r) for k, r in best_of_smaller.items()}
    er = {k: v for k, v in figures.items() if k.startswith("early_rejection")}
    out = {
        "machine": platform.machine(),
        "policy": args.policy,
        "prompts": source,
        "n_prompts": len(prompts),
        "n": args.n,
        "max_tokens": args.max_tokens,
        "strategies": figures,
        "adaptive_replay": adaptive_sweep,
        "best_of_smaller_n": best_of_k,
        "headline": {
            "best_of_n_mean_score": reference["mean_score"],
            "early_rejection": cheapest_reaching(
                reference["mean_score"], er, reference["mean_tokens"]
            ),
            "adaptive": cheapest_reaching(
                reference["mean_score"], adaptive_sweep, reference["mean_tokens"]
            ),
            "adaptive_tokens_ratio_when_first_passes": round(
                sum(a for a, _ in first_passes) / sum(b for _, b in first_passes), 3
            )
            if first_passes
            else None,
        },
    }
    return out


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
