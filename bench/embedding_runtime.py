"""The relevance scorer on its two runtimes (onnx and torch), on the labelled pairs' texts.

Prints JSON: for every (prompt, answer) in tests/data/pairs.jsonl (both the good
and the bad answer), the relevance score on each runtime; their largest and mean
absolute difference; and the time to load each runtime and to score all pairs
(one request at a time, as the aligner calls it), best of ``--repeats``.
``--pairs`` adds the default policy's pairwise accuracy with the relevance
scores of each runtime and every other scorer's values held fixed (the judge's
llama.cpp arithmetic varies between runs, which would blur the comparison).

    python bench/embedding_runtime.py [--repeats 3] [--pairs]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from aligntime import Aligner
from aligntime.evaluation.pairwise import load_pairs, pairwise_accuracy
from aligntime.policy.loader import load_policy
from aligntime.scorers.combine import combine
from aligntime.scorers.embedding import EmbeddingOptions, EmbeddingRelevance
from aligntime.types import Candidate, Message

PAIRS = Path(__file__).parents[1] / "tests" / "data" / "pairs.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pairs", action="store_true", help="also the pairs accuracy")
    args = parser.parse_args()
    rows = [json.loads(line) for line in PAIRS.read_text("utf-8").splitlines() if line.strip()]
    requests = [
        ([Message("user", r["prompt"])], [Candidate(text=r["good"]), Candidate(text=r["bad"])])
        for r in rows
    ]
    scores: dict[str, list[float]] = {}
    figures: dict[str, dict[str, float]] = {}
    for runtime in ("onnx", "torch"):
        scorer = EmbeddingRelevance(EmbeddingOptions(runtime=runtime))
        t0 = time.perf_counter()
        scorer.load()
        load_s = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            values = [v for msgs, cands in requests for v in scorer.score_sync(msgs, cands)]
            times.append(time.perf_counter() - t0)
        scores[runtime] = values
        figures[runtime] = {
            "load_s": round(load_s, 3),
            "score_all_s": round(min(times), 3),
            "ms_per_request": round(1000 * min(times) / len(requests), 2),
        }
    diffs = [abs(a - b) for a, b in zip(scores["onnx"], scores["torch"], strict=True)]
    accuracy = pairs_accuracy(scores, [r["id"] for r in rows]) if args.pairs else None
    print(
        json.dumps(
            {
                "pairs_accuracy": accuracy,
                "texts": len(diffs),
                "requests": len(requests),
                "max_abs_diff": round(max(diffs), 5),
                "mean_abs_diff": round(statistics.fmean(diffs), 5),
                "within_0.01": sum(d <= 0.01 for d in diffs),
                "runtimes": figures,
                "speedup": round(
                    figures["torch"]["score_all_s"] / figures["onnx"]["score_all_s"], 2
                ),
            },
            indent=1,
        )
    )


def pairs_accuracy(relevance: dict[str, list[float]], ids: list[str]) -> dict[str, float]:
    """The default policy's pairs accuracy with each runtime's relevance, all else fixed."""
    pairs = load_pairs(PAIRS)
    assert [p.id for p in pairs] == ids, "pairs.jsonl read in another order"
    policy = load_policy("default")
    data = policy.model_dump()
    data["scorers"] = [s for s in data["scorers"] if s["kind"] != "embedding"]
    others = Aligner(type(policy).model_validate(data))
    full = Aligner.from_policy("default")
    # Every scorer but relevance scores each pair once; relevance comes from `relevance`,
    # in the order the values were computed above (good, bad per pair).
    fixed = {p.id: others.score(p.prompt, [p.good, p.bad]) for p in pairs}
    index = {p.id: i for i, p in enumerate(pairs)}
    result = {}
    for runtime, values in relevance.items():

        def score(prompt: str, answers: list[str], values: list[float] = values) -> list[Any]:
            pair = next(p for p in pairs if p.prompt == prompt and [p.good, p.bad] == answers)
            cands = fixed[pair.id]
            raw = {name: [c.scores[name] for c in cands] for name in cands[0].scores}
            i = index[pair.id]
            raw["relevance"] = values[2 * i : 2 * i + 2]
            return combine([Candidate(text=a) for a in answers], raw, full.weightings)

        result[runtime] = pairwise_accuracy(pairs, score).accuracy
    others.close()
    full.close()
    return result


if __name__ == "__main__":
    main()
