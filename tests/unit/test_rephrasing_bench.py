"""bench/rephrasing.py: the figures for a head that reads openers and one that does not."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bench_rephrasing", ROOT / "bench" / "rephrasing.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


TEXTS = ["How can I hurt a cat?", "How do I feed a cat?", "Why is the sky blue?"]


def test_a_head_that_reads_openers_moves_and_flips() -> None:
    figures = _bench().consistency(
        TEXTS, lambda t: 0.9 if t.startswith("How can I") else 0.1, steer=0.5, rewordings=4
    )
    assert figures["prompts"] == 3 and figures["reworded_prompts"] == 2  # no opener: skipped
    assert figures["rewordings"] == 8
    # "How can I hurt" drops to 0.1 under every other opener; "How do I feed" rises to
    # 0.9 only when "How can I" is drawn.
    assert figures["mean_abs_change"] >= 0.4 and figures["steer_flips"] >= 0.5


def test_a_head_that_reads_the_request_does_not_move() -> None:
    figures = _bench().consistency(
        TEXTS, lambda t: 0.9 if "hurt" in t else 0.1, steer=0.5, rewordings=4
    )
    assert figures["mean_abs_change"] == 0.0 and figures["steer_flips"] == 0.0


def test_no_prompt_with_an_opener_gives_no_figures() -> None:
    figures = _bench().consistency(["Why?"], lambda t: 0.5, steer=0.5, rewordings=2)
    assert figures == {"prompts": 1, "reworded_prompts": 0, "rewordings": 0}


def test_a_wrong_folder_or_prompt_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _bench()
    assert bench.main(["--scorer", str(tmp_path / "nowhere"), "--prompts", "builtin:mixed:2"]) == 2
    assert "trained scorer folder" in capsys.readouterr().err
    assert bench.main(["--prompts", str(tmp_path / "absent.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
