"""Benchmark the embedded default on this machine; prints one JSON object.

Figures, all measured in this one run:

- ``decode``: aggregate generation throughput (completion tokens / wall seconds of
  ``Generator.generate``) at n = 1, at n = 5 as one batched request from one
  shared prompt, and for five n = 1 requests one after another (the naive way);
  ``speedup_n5_over_n1`` is the headline ratio (1.0 means no gain from batching).
- ``align``: one ``Aligner.align`` with the default policy (models already loaded),
  split into generate and score seconds, repeated and reported as medians.

Usage: ``python bench/embedded.py [--repeats 3] [--max-tokens 256]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from typing import Any

from aligntime import Aligner
from aligntime.types import GenerationParams, Message

PROMPTS = [
    "My child has a fever. What should I do?",
    "How do I make a simple budget for my household?",
    "What are good ways to fall asleep faster?",
]


async def _throughput(aligner: Aligner, n: int, max_tokens: int, seed: int) -> tuple[int, float]:
    messages = aligner.prompt.apply([Message("user", PROMPTS[seed % len(PROMPTS)])])
    params = GenerationParams(max_tokens=max_tokens, seed=seed)
    t0 = time.perf_counter()
    gen = await aligner.generator.generate(messages, n, params)
    return gen.usage.completion_tokens, time.perf_counter() - t0


def decode_figures(aligner: Aligner, repeats: int, max_tokens: int) -> dict[str, Any]:
    rows: dict[str, list[float]] = {"n1": [], "n5": [], "sequential5": []}
    for r in range(repeats):
        toks, secs = asyncio.run(_throughput(aligner, 1, max_tokens, r))
        rows["n1"].append(toks / secs)
        toks, secs = asyncio.run(_throughput(aligner, 5, max_tokens, r))
        rows["n5"].append(toks / secs)
        total_toks, total_secs = 0, 0.0
        for i in range(5):
            toks, secs = asyncio.run(_throughput(aligner, 1, max_tokens, 100 * r + i))
            total_toks += toks
            total_secs += secs
        rows["sequential5"].append(total_toks / total_secs)
    med = {k: statistics.median(v) for k, v in rows.items()}
    return {
        "tokens_per_s_n1": round(med["n1"], 1),
        "tokens_per_s_n5": round(med["n5"], 1),
        "tokens_per_s_sequential5": round(med["sequential5"], 1),
        "speedup_n5_over_n1": round(med["n5"] / med["n1"], 3),
        "speedup_sequential5_over_n1": round(med["sequential5"] / med["n1"], 3),
    }


def align_figures(aligner: Aligner, repeats: int, max_tokens: int) -> dict[str, Any]:
    runs = [
        aligner.align(PROMPTS[i % len(PROMPTS)], 5, max_tokens=max_tokens, seed=i)
        for i in range(repeats)
    ]
    gen = statistics.median(r.timings.generate_s for r in runs)
    score = statistics.median(r.timings.score_s for r in runs)
    total = statistics.median(r.timings.total_s for r in runs)
    return {
        "generate_s": round(gen, 3),
        "score_s": round(score, 3),
        "total_s": round(total, 3),
        "score_over_generate": round(score / gen, 3),
        "completion_tokens": statistics.median(r.usage.completion_tokens for r in runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="default")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=256)
    args = parser.parse_args()
    t0 = time.perf_counter()
    aligner = Aligner.from_policy(args.policy)
    aligner.load()
    load_s = time.perf_counter() - t0
    asyncio.run(_throughput(aligner, 1, 8, 0))  # warm-up
    report = {
        "machine": {"cpu_count": __import__("os").cpu_count(), "python": platform.python_version()},
        "policy": args.policy,
        "max_tokens": args.max_tokens,
        "repeats": args.repeats,
        "load_s": round(load_s, 3),
        "decode": decode_figures(aligner, args.repeats, args.max_tokens),
        "align": align_figures(aligner, args.repeats, args.max_tokens),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
