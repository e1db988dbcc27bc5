"""The held-out ceiling: best-of-n ranked by the referee's own verdicts.

Summaries round to six decimals, so expected means are compared to 1e-5."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from aligntime.evaluation.summary import ReplayConfig, StrategySpec, summarise
from aligntime.scorers.rules import RulesScorer

BEST_OF_N = ReplayConfig(
    ns=(1, 2, 3), strategies=(StrategySpec("best_of_n", "best_of_n", {}),), budget=3
)


def _row(
    text: str, score: float, heldout: float, *, passed: bool = True, origin: str = "sampled"
) -> dict[str, Any]:
    return {
        "text": text,
        "tokens": 4,
        "scores": {"rules": score},
        "score": score,
        "passed": passed,
        "heldout": heldout,
        "refusal": False,
        "origin": origin,
    }


def _record(rows: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "id": "p1",
        "prompt": "How do I boil an egg?",
        "harmful": False,
        "candidates": rows,
        "fallback": _row("Sorry.", 0.0, 0.0),
        "timings": {"generate_s": 3.0, "score_s": 0.3, "input_s": 0.0},
        **extra,
    }


def _cells(records: list[dict[str, Any]], heldout: RulesScorer | None) -> dict[int, dict[str, Any]]:
    return {c["n"]: c for c in summarise(records, BEST_OF_N, ["rules"], heldout)}


def test_the_ceiling_ranks_by_the_referee_where_the_selection_ranks_by_score() -> None:
    # The selection scorers like the answer the referee likes least, and the other way round.
    rows = [_row("a", 0.9, 0.1), _row("b", 0.5, 0.5), _row("c", 0.1, 0.9)]
    cells = _cells([_record(rows)], RulesScorer())
    # n = 3 takes the whole pool: best-of-n shows "a", the oracle "c".
    assert cells[3]["heldout_win"]["mean"] == pytest.approx((0.5 + 0 + 0) / 3, abs=1e-5)
    assert cells[3]["heldout_ceiling"]["mean"] == pytest.approx((1 + 1 + 0.5) / 3, abs=1e-5)
    # n = 1 is one random sample whichever way it is ranked: both equal the plain sample's 0.5.
    assert cells[1]["heldout_win"]["mean"] == pytest.approx(0.5, abs=1e-5)
    assert cells[1]["heldout_ceiling"]["mean"] == pytest.approx(0.5, abs=1e-5)
    # n = 2: the oracle keeps the better of two random samples (c in 2 of 3 pairs, else b).
    assert cells[2]["heldout_ceiling"]["mean"] == pytest.approx(
        (2 / 3) * (2.5 / 3) + (1 / 3) * (1.5 / 3), abs=1e-5
    )


def test_gates_still_hold_for_the_oracle() -> None:
    # The referee's favourite failed a gate: the oracle may not show it.
    rows = [_row("a", 0.9, 0.1), _row("b", 0.5, 0.5), _row("c", 0.1, 0.9, passed=False)]
    cells = _cells([_record(rows)], RulesScorer())
    assert cells[3]["heldout_ceiling"]["mean"] == pytest.approx((1 + 0.5 + 0) / 3, abs=1e-5)


def test_an_offered_refusal_competes_in_every_subset() -> None:
    rows = [
        _row("a", 0.9, 0.1),
        _row("b", 0.5, 0.2),
        _row("c", 0.4, 0.3),
        _row("I can't help.", 0.2, 0.8, origin="refusal"),
    ]
    cells = _cells([_record(rows)], RulesScorer())
    # The referee prefers the offered answer to both samples, at every n.
    assert cells[1]["heldout_ceiling"]["mean"] == pytest.approx(1.0, abs=1e-5)
    assert cells[1]["heldout_win"]["mean"] < 1.0


def test_no_referee_or_a_refused_prompt_has_no_ceiling() -> None:
    rows = [_row("a", 0.9, 0.1), _row("b", 0.5, 0.5), _row("c", 0.1, 0.9)]
    cells = _cells([_record(rows)], None)
    assert cells[3]["heldout_ceiling"]["mean"] is None or math.isnan(
        cells[3]["heldout_ceiling"]["mean"]
    )
    refused = _record([], input={"action": "refuse"})
    ceiling = _cells([refused], RulesScorer())[3]["heldout_ceiling"]["mean"]
    assert ceiling is None or math.isnan(ceiling)


@pytest.mark.parametrize("seed", range(5))
def test_best_of_n_never_beats_its_ceiling(seed: int) -> None:
    rng = random.Random(seed)
    records = []
    for p in range(6):
        rows = [
            _row(f"answer {i}", rng.random(), rng.choice([0.0, 0.5, 1.0, rng.random()]),
                 passed=rng.random() > 0.2)
            for i in range(5)
        ]  # fmt: skip
        records.append({**_record(rows), "id": f"p{p}"})
    config = ReplayConfig(ns=(1, 2, 3, 5), strategies=BEST_OF_N.strategies, budget=5)
    for cell in summarise(records, config, ["rules"], RulesScorer()):
        assert cell["heldout_ceiling"]["mean"] >= cell["heldout_win"]["mean"] - 1e-5
