"""The relevance scorer on its two runtimes (onnx and torch), on the labelled pairs' texts.

Prints JSON: for every (prompt, answer) in tests/data/pairs.jsonl (both the good
and the bad answer), the relevance score on each runtime; their largest and mean
absolute difference; and the time to load each runtime and to score all pairs
(one request at a time, as the aligner calls it), best of ``--repeats``.

    python bench/embedding_runtime.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from aligntime.scorers.embedding import EmbeddingOptions, EmbeddingRelevance
from aligntime.types import Candidate, Message

PAIRS = Path(__file__).parents[1] / "tests" / "data" / "pairs.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = [json.loads(line) for line in PAIRS.read_text("utf-8").splitlines() if line.strip()]
    requests = [
        ([Message("user", r["prompt"])], [Candidate(text=r["good"]), Candidate(text=r["bad"])])
        for r in rows
    ]
    scores: dict[str, list[float]] = {}
    figures: dict[str, dict[str, float]] = {}
    for runtime in ("onnx", "torch"):
        scorer = EmbeddingRelevance(EmbeddingOptions(runtime=runtime))  # type: ignore[arg-type]
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
    print(
        json.dumps(
            {
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


if __name__ == "__main__":
    main()
