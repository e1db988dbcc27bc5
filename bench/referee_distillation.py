"""Whether distilling the held-out referee into the reward head makes best-of-N choose better.

The referee's pools (``aligntime/training/data/referee_pools.jsonl``, written by the build's
``pools`` stage: five answers by the default policy to each of 106 benign training
requests, each valued by Qwen2.5-Coder-0.5B) are split by request into ``--folds`` folds.
For each fold, two reward heads are fitted on the build's preference pairs (its
``prompts`` stage must have run; the request's harm is its label), one of them with the
``distilled`` pairs of the other folds' pools added (the answer the referee valued more
chosen, as the build makes them). On the held-out fold's pools it reports, for those two
heads and for the shipped reward head (each reading a harm of 0: the requests are benign):

- ``agreement``: the share of pairs of sampled answers the referee values at least 0.1
  apart that the reward head orders the same way;
- ``win_rate``: the referee's win rate of the answer the default policy chooses
  (:func:`aligntime.scorers.combine.combine` over the other scorers' values recorded in
  the pools, with the policy's weights and gates, this reward head's values in place of
  the recorded ones) over each sampled answer, ties counting one half: best-of-5 against
  one sample, as ``aligntime eval`` measures it.

Usage: ``nice .venv/bin/python bench/referee_distillation.py [--folds 5]`` (about two
minutes on 2 cores). Prints JSON.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import random
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from aligntime import Aligner
from aligntime.errors import AligntimeError
from aligntime.policy.loader import load_policy
from aligntime.scorers.combine import ScorerWeighting, combine
from aligntime.scorers.sentence_encoder import SentenceEncoder
from aligntime.scorers.trained import builtin_folder
from aligntime.training.artifact import load_folder
from aligntime.training.data import PreferencePair
from aligntime.training.features import reward_features
from aligntime.training.heads import RewardHead, TrainSettings, sigmoid
from aligntime.training.trainer import kind_weights
from aligntime.types import Candidate

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = TrainSettings(steps=600, learning_rate=0.01, l2=1e-3, seed=1)
"""As the build fits the shipped reward head."""


def build_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "build_safety_scorer", ROOT / "scripts" / "build_safety_scorer.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--weight",
        action="append",
        default=[],
        metavar="NAME=W",
        help="replay the choice with this weight for a scorer of the default policy",
    )
    args = parser.parse_args(argv)
    if args.folds < 2:
        parser.error("--folds must be at least 2")
    build = build_script()
    rows = build._read_jsonl(build.DEFAULT_WORK / "prompts.jsonl")
    if not rows:
        print("error: run the build's prompts stage first", file=sys.stderr)
        return 2
    try:
        weightings = _weightings(args.weight)
        known = {r["prompt"] for r in rows}
        answers = [a for a in build._read_jsonl(build.ANSWERS) if a["prompt"] in known]
        base = build.build_dataset(rows, answers)[0].pairs
        cache = build.DiskCache(SentenceEncoder(threads=2), build.DEFAULT_WORK / "embeddings.npz")
        shipped = load_folder(builtin_folder("harm-minilm"))
        trained = {
            r["prompt"]
            for r in rows
            if r["label"] == 0.0 and r["split"] != "excluded" and not r["eval_set"]
        }
        pools = [p for p in build._read_jsonl(build.REFEREE_POOLS) if p["prompt"] in trained]
    except AligntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if len(pools) < args.folds:
        print(
            f"error: {len(pools)} referee pools for {args.folds} folds in {build.REFEREE_POOLS}: "
            "lower --folds, or run the build's pools stage (scripts/build_safety_scorer.py "
            "--stage pools)",
            file=sys.stderr,
        )
        return 2
    blocks = list(shipped.features)

    def features(pairs: list[PreferencePair]) -> tuple[np.ndarray, np.ndarray]:
        u = cache.embed([p.request for p in pairs])
        h = np.array([p.harm or 0.0 for p in pairs], np.float32)
        good = reward_features(u, cache.embed([p.chosen for p in pairs]), h, blocks)
        bad = reward_features(u, cache.embed([p.rejected for p in pairs]), h, blocks)
        return good, bad

    def fit(pairs: list[PreferencePair]) -> RewardHead:
        good, bad = features(pairs)
        head = RewardHead.init(good.shape[1], 0, SETTINGS.seed)
        head.fit(good, bad, SETTINGS, None, kind_weights(pairs))
        return head

    def measure(head: Any, test: list[dict[str, Any]]) -> dict[str, float]:
        agree: list[float] = []
        wins: list[float] = []
        for pool in test:
            cands = pool["candidates"]
            u = cache.embed([pool["prompt"]])
            v = cache.embed([c["text"] or " " for c in cands])
            # Benign requests: harm 0 for every head, the shipped one included.
            h = np.zeros(len(cands), np.float32)
            reward = sigmoid(head(reward_features(np.repeat(u, len(cands), 0), v, h, blocks)))
            value = [c["heldout"] for c in cands]
            sampled = [i for i, c in enumerate(cands) if c["origin"] == "sampled"]
            for i, j in itertools.combinations(sampled, 2):
                if abs(value[i] - value[j]) >= 0.1:
                    agree.append(float((reward[i] - reward[j]) * (value[i] - value[j]) > 0))
            chosen = _combined(cands, [float(r) for r in reward], weightings)
            best = max(range(len(cands)), key=lambda k: (chosen[k].passed, chosen[k].score, -k))
            wins.append(
                float(np.mean([_win(value[best], value[k]) for k in sampled])) if sampled else 0.5
            )
        return {"agreement": float(np.mean(agree)), "win_rate": float(np.mean(wins))}

    order = list(range(len(pools)))
    random.Random(args.seed).shuffle(order)
    folds = [order[f :: args.folds] for f in range(args.folds)]
    plain = fit(base)
    arms: dict[str, list[dict[str, float]]] = {"shipped": [], "build_pairs": [], "distilled": []}
    distilled_pairs = 0
    for f, fold in enumerate(folds):
        test = [pools[i] for i in fold]
        train = [pools[i] for g, other in enumerate(folds) if g != f for i in other]
        extra = build.referee_pairs(rows, train)
        distilled_pairs += len(extra)
        arms["shipped"].append(measure(shipped.reward, test))
        arms["build_pairs"].append(measure(plain, test))
        arms["distilled"].append(measure(fit(base + extra), test))
    report = {
        "pools": len(pools),
        "weights": {w.name: w.weight for w in weightings},
        "folds": args.folds,
        "distilled_pairs_per_fold": round(distilled_pairs / args.folds, 1),
        **{
            arm: {k: round(float(np.mean([m[k] for m in ms])), 4) for k in ms[0]}
            for arm, ms in arms.items()
        },
    }
    print(json.dumps(report, indent=1))
    return 0


def _weightings(overrides: list[str]) -> list[ScorerWeighting]:
    """The default policy's scorer weights and gates, with ``NAME=W`` overrides (its
    scorers are built, not loaded: only their ranges and directions are read)."""
    policy = load_policy("default")
    weights = {s.name: s.weight for s in policy.scorers}
    for item in overrides:
        name, _, value = item.partition("=")
        if name not in weights:
            raise SystemExit(f"--weight: the default policy has no scorer {name!r}")
        try:
            weights[name] = float(value)
        except ValueError:
            raise SystemExit(f"--weight {item!r}: the weight must be a number") from None
    scorers = [s.model_copy(update={"weight": weights[s.name]}) for s in policy.scorers]
    return Aligner.from_policy(policy.model_copy(update={"scorers": scorers})).weightings


def _combined(
    cands: list[dict[str, Any]], reward: list[float], weightings: list[ScorerWeighting]
) -> list[Candidate]:
    """A pool's candidates combined as the policy combines them, ``reward`` in place of
    the recorded reward values (a scorer that did not rate an answer stays absent)."""
    raw = {
        w.name: [c["scores"].get(w.name) for c in cands] for w in weightings if w.name != "reward"
    }
    raw["reward"] = list(reward)
    return combine([Candidate(text=c["text"] or "") for c in cands], raw, weightings)


def _win(a: float, b: float) -> float:
    return 1.0 if a > b else 0.5 if a == b else 0.0


if __name__ == "__main__":
    raise SystemExit(main())
