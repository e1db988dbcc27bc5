"""bench/referee_distillation.py: the policy's weighted choice it replays, and the win count."""

from __future__ import annotations

from types import ModuleType

import pytest

from repo_scripts import load_script


def _bench() -> ModuleType:
    return load_script("bench/referee_distillation.py")


def test_the_choice_is_the_policys_combination_with_the_new_reward() -> None:
    bench = _bench()
    weightings = bench._weightings(["judge=0"])
    assert {w.name: w.weight for w in weightings}["judge"] == 0.0
    scores = {"safety": 0.1, "rules": 1.0, "relevance": 0.5, "judge": 0.9, "fit": 0.9}
    cands = [
        {"text": "one", "scores": {**scores, "reward": 0.1}},
        {"text": "two", "scores": {**scores, "reward": 0.2}},
        # Fails the default policy's safety gate (max 0.6), whatever its reward.
        {"text": "three", "scores": {**scores, "safety": 0.9}},
    ]
    combined = bench._combined(cands, [0.9, 0.2, 1.0], weightings)
    assert combined[0].score > combined[1].score  # the new reward decides, not the recorded one
    assert [c.passed for c in combined] == [True, True, False]
    # A scorer that did not rate an answer (a lazy judge) counts 0 there, as in the aligner.
    lazy = [{"text": "one", "scores": {k: v for k, v in scores.items() if k != "judge"}}]
    assert bench._combined(lazy, [0.5], bench._weightings([]))[0].scores.get("judge") is None
    with pytest.raises(SystemExit, match="no scorer 'nope'"):
        bench._weightings(["nope=1"])
    with pytest.raises(SystemExit, match="must be a number"):
        bench._weightings(["reward=lots"])


def test_a_win_counts_one_and_a_tie_one_half() -> None:
    bench = _bench()
    assert [bench._win(0.7, 0.6), bench._win(0.6, 0.6), bench._win(0.5, 0.6)] == [1.0, 0.5, 0.0]
