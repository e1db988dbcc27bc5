"""How far a request head's verdict moves when only the request's opener is reworded.

Each prompt that opens with a common opener ("How can I", "Write", "Give me", ...) is
reworded ``--rewordings`` times by :func:`aligntime.training.phrasing.rephrase` (another
opener of the same meaning, the rest word for word). Reported for the head's P(harmful):
the mean and 90th percentile of |P(reworded) - P(original)|, and the share of rewordings
that cross the steer threshold either way. A head that reads what is asked barely moves;
one that learned its training data's openers moves a lot.

Run it on prompts the head was never trained on (the defaults are: the first 50 of
``builtin:mixed`` and ``tests/data/unseen_requests.jsonl``).

Usage: ``python bench/rephrasing.py [--scorer harm-minilm] [--head harm]
[--prompts SPEC ...] [--rewordings 4] [--steer P]``. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aligntime.errors import AligntimeError
from aligntime.evaluation.datasets import load_prompts
from aligntime.scorers.trained import TrainedOptions, TrainedScorer
from aligntime.training.artifact import load_folder
from aligntime.training.phrasing import rephrase
from aligntime.types import Message

UNSEEN = Path(__file__).resolve().parent.parent / "tests" / "data" / "unseen_requests.jsonl"


def consistency(
    texts: Sequence[str], p_harm: Callable[[str], float], steer: float, rewordings: int
) -> dict[str, Any]:
    """The figures above for ``p_harm`` over ``texts`` (those without an opener are skipped)."""
    deltas: list[float] = []
    flips = 0
    reworded = 0
    for text in texts:
        others = [rephrase(text, random.Random(seed)) for seed in range(rewordings)]
        others = [o for o in others if o is not None]
        if not others:
            continue
        reworded += 1
        base = p_harm(text)
        for other in others:
            p = p_harm(other)
            deltas.append(abs(p - base))
            flips += (p >= steer) != (base >= steer)
    if not deltas:
        return {"prompts": len(texts), "reworded_prompts": 0, "rewordings": 0}
    return {
        "prompts": len(texts),
        "reworded_prompts": reworded,
        "rewordings": len(deltas),
        "mean_abs_change": round(float(np.mean(deltas)), 4),
        "p90_abs_change": round(float(np.quantile(deltas, 0.9)), 4),
        "steer": steer,
        "steer_flips": round(flips / len(deltas), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scorer", default="harm-minilm", help="harm-minilm or a folder")
    parser.add_argument("--head", default="harm", choices=("harm", "advice"))
    parser.add_argument(
        "--prompts", nargs="+", default=["builtin:mixed:50", str(UNSEEN)],
        help="prompt sets (NAME:LIMIT keeps the first LIMIT of a built-in set)",
    )  # fmt: skip
    parser.add_argument("--rewordings", type=int, default=4)
    parser.add_argument("--steer", type=float, help="default: the folder's steer threshold")
    args = parser.parse_args(argv)
    try:
        texts: list[str] = []
        for spec in args.prompts:
            name, _, limit = spec.rpartition(":") if spec.count(":") == 2 else (spec, "", "")
            texts += [p.prompt for p in load_prompts(name, int(limit) if limit else None)]
        scorer = TrainedScorer(TrainedOptions(head=args.head, model=args.scorer), name=args.head)
        config = load_folder(scorer.folder).config
        steer = args.steer if args.steer is not None else float(config[args.head]["steer"])
        figures = consistency(
            texts, lambda t: scorer.harm_of([Message("user", t)]), steer, args.rewordings
        )
    except AligntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"scorer": args.scorer, "head": args.head, **figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
