"""bench/referee_distillation.py: the policy's weighted choice it replays, and the win count."""

from __future__ import annotations

from types import ModuleType

import pytest

from repo_scripts import load_script


def _bench() -> ModuleType:
    return load_script("bench/referee_distillation.py")


def test_the_weighted_sum_inverts_lower_is_better_scorers_and_skips_missing_ones() -> None:
    bench = _bench()
    weights = {"safety": 0.5, "reward": 2.0, "judge": 1.0}
    scores = {"safety": 0.2, "reward": 0.9, "judge": float("nan")}
    value = bench._weighted(scores, weights, {"safety": "lower"})
    # A judge that did not read the answer (lazy) adds nothing, as in the aligner.
    assert value == pytest.approx((0.5 * 0.8 + 2.0 * 0.9) / 3.5)
    assert [bench._win(0.7, 0.6), bench._win(0.6, 0.6), bench._win(0.5, 0.6)] == [1.0, 0.5, 0.0]
