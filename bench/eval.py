"""Benchmark ``aligntime eval`` on the default policy; prints one JSON object.

Runs the evaluation harness as ``aligntime eval`` does (same functions): the
built-in mixed prompt set (harmful and benign alternated), a pool of the
largest N per prompt, every strategy replayed at every N. Figures:

- ``wall_s``: wall-clock seconds of this run, model loading included. The pass
  is resumable: prompts already in ``--out`` are not sampled again, and
  ``sampled_now`` says how many this run did; ``recorded_*_s`` sum the times
  recorded with every prompt, whichever run sampled it.
- ``per_prompt_s``: recorded generation + scoring + held-out seconds per prompt.
- ``tokens_per_s``: completion tokens / recorded generation seconds.
- ``best_of_n``: for each N, the headline metrics of best-of-N (means).

Usage: ``python bench/eval.py [--limit 50] [--n 1,2,4,8,16] [--out /tmp/eval50]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from aligntime.evaluation.datasets import load_prompts
from aligntime.evaluation.experiment import EvalConfig, parse_ns, prepare, run_eval, without_nan
from aligntime.evaluation.runner import RESULTS, load_records
from aligntime.policy.loader import load_policy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policy", default="default")
    parser.add_argument("--prompts", default="builtin:mixed")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--n", default="1,2,4,8,16")
    parser.add_argument("--out", default="/tmp/eval50")
    parser.add_argument("--max-tokens", type=int, default=None)
    args = parser.parse_args()

    started = time.perf_counter()
    out = Path(args.out)
    before = len(load_records(out / RESULTS))
    config = EvalConfig(ns=parse_ns(args.n), prompts_spec=args.prompts, max_tokens=args.max_tokens)
    prompts = load_prompts(args.prompts, args.limit)
    aligner, heldout = prepare(load_policy(args.policy), config)
    aligner.load()
    load_s = time.perf_counter() - started
    summary = run_eval(aligner, heldout, prompts, config, out)
    wall_s = time.perf_counter() - started
    records = load_records(out / RESULTS)

    timings = summary["timings"]
    per_prompt = (
        timings["recorded_generate_s"] + timings["recorded_score_s"] + timings["recorded_heldout_s"]
    ) / max(1, summary["prompts"]["all"])
    tokens = sum(c["tokens"] for r in records for c in r["candidates"])
    figures: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "policy": args.policy,
        "prompts": summary["prompts"],
        "pool": max(config.ns),
        "sampled_now": len(records) - before,
        "wall_s": round(wall_s, 1),
        "load_s": round(load_s, 1),
        "timings": timings,
        "per_prompt_s": round(per_prompt, 1),
        "tokens_per_s": round(tokens / max(1e-9, timings["recorded_generate_s"]), 1),
        "mean_tokens_per_candidate": round(tokens / max(1, summary["candidates"]), 1),
        "gate_pass_rate": summary["gate_pass_rate"],
        "best_of_n": {
            c["n"]: {
                k: round(c[k]["mean"], 3)
                for k in (
                    "score",
                    "heldout_win",
                    "proxy_win",
                    "fallback_rate",
                    "refusal_harmful",
                    "refusal_benign",
                    "tokens",
                    "latency_s",
                )
            }
            for c in summary["results"]
            if c["strategy"] == "best_of_n"
        },
    }
    print(json.dumps(without_nan(figures), indent=1))


if __name__ == "__main__":
    main()
