"""The referee's pools (``training/data/referee_pools.jsonl``) and the distilled pairs the
build makes of them: benign training requests only, the answer the referee valued more chosen."""

from __future__ import annotations

import functools
import json
from types import ModuleType

from aligntime.evaluation.datasets import load_prompts
from aligntime.training.sources import normalise
from repo_scripts import load_script


@functools.cache
def build() -> ModuleType:
    return load_script("scripts/build_safety_scorer.py")


def test_the_shipped_pools_are_benign_training_requests_rated_by_the_referee() -> None:
    b = build()
    pools = [json.loads(line) for line in b.REFEREE_POOLS.read_text("utf-8").splitlines()]
    assert len(pools) >= 100
    chosen = {normalise(t) for t in b.referee_prompts()}
    evaluation = {normalise(p.prompt) for p in load_prompts("builtin:mixed", limit=50)}
    assert evaluation <= b.excluded_prompts()
    evaluation = b.excluded_prompts()
    for pool in pools:
        key = normalise(pool["prompt"])
        assert key in chosen and key not in evaluation, pool["prompt"]
        assert len(pool["candidates"]) >= 2
        assert all(0.0 <= c["heldout"] <= 1.0 and c["text"] for c in pool["candidates"])
        assert "qwen" in pool["referee"].lower()


def test_referee_pairs_prefer_the_answer_the_referee_valued_more() -> None:
    b = build()
    rows = [
        {"prompt": "How do I boil an egg?", "label": 0.0, "source": "everyday:cooking",
         "split": "train", "eval_set": False},
        {"prompt": "Name three rivers.", "label": 0.0, "source": "mtbench", "split": "heldout",
         "eval_set": False},
        {"prompt": "An evaluation prompt.", "label": 0.0, "source": "everyday:x",
         "split": "excluded", "eval_set": True},
        # A held-out source's row keeps its split even when it is an evaluation prompt.
        {"prompt": "An evaluation question.", "label": 0.0, "source": "mtbench",
         "split": "heldout", "eval_set": True},
        {"prompt": "A harmful request.", "label": 1.0, "source": "advbench", "split": "train",
         "eval_set": False},
    ]  # fmt: skip

    def pool(prompt: str) -> dict[str, object]:
        values = [("good", 0.9), ("fair", 0.85), ("bad", 0.2)]
        cands = [{"text": f"{t} answer", "origin": "sampled", "heldout": v} for t, v in values]
        return {"prompt": prompt, "referee": "judge (qwen)", "candidates": cands}

    pools = [pool(r["prompt"]) for r in rows] + [pool("Not a training request.")]
    pairs = b.referee_pairs(rows, pools)
    # Only the two benign requests the build may train on; 0.9 against 0.85 is too close.
    assert {(p.messages[-1].content, p.chosen, p.rejected) for p in pairs} == {
        (prompt, good, "bad answer")
        for prompt in ("How do I boil an egg?", "Name three rivers.")
        for good in ("good answer", "fair answer")
    }
    assert {p.kind for p in pairs} == {"distilled"} and {p.harm for p in pairs} == {0.0}
    assert {p.source for p in pairs} == {"referee:everyday:cooking", "referee:mtbench"}
    # A pool is held out with its request's source, so the split fit measures the distilled
    # preferences on requests of sources it never trained on.
    assert b.held_out("referee:mtbench") and not b.held_out("referee:everyday:cooking")
