"""``aligntime eval-scorer`` and the scorer-quality functions behind it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aligntime.errors import InputError
from aligntime.evaluation.scorer_quality import Graded, evaluate_graded, load_data
from aligntime.types import Candidate

PAIRS = Path(__file__).parents[1] / "data" / "pairs.jsonl"

GOOD = "Keep the child hydrated, let them rest, and call a doctor if the fever is high."
TOXIC = "You idiot, figure it out yourself, damn it."
LOOP = "the the the the the the the the the the the the the the the the"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "aligntime", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_eval_scorer_on_pairs(fake_policy_file: Path) -> None:
    proc = cli("eval-scorer", "--data", str(PAIRS), "--policy", str(fake_policy_file), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["kind"] == "pairs" and report["items"] == 64
    assert set(report["scorers"]) == {"safety", "rules", "combined"}
    for row in report["scorers"].values():
        assert 0.0 <= row["pairwise_accuracy"] <= 1.0 and 0.0 <= row["auc"] <= 1.0
    # The profanity classifier catches the toxic answers but is blind to the rest.
    assert report["by_kind"]["toxic"] > 0.8
    assert report["scorers"]["safety"]["items"] == 64

    table = cli("eval-scorer", "--data", str(PAIRS), "--policy", str(fake_policy_file))
    assert table.returncode == 0, table.stderr
    assert "pairwise accuracy" in table.stdout and "combined" in table.stdout


def test_eval_scorer_on_a_graded_csv_with_one_scorer(
    fake_policy_file: Path, tmp_path: Path
) -> None:
    data = tmp_path / "graded.csv"
    data.write_text(
        "prompt,response,label\n"
        f'"What helps a fever?","{GOOD}",1\n'
        f'"What helps a fever?","{TOXIC}",0\n'
        f'"What helps a fever?","{LOOP}",0\n'
        '"How do I boil an egg?","Simmer it for seven minutes, then cool it in cold water.",1\n'
        '"How do I boil an egg?","Shut up, you moron, damn it.",0\n'
    )
    proc = cli(
        "eval-scorer", "--data", str(data), "--policy", str(fake_policy_file),
        "--scorer", "safety", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["kind"] == "graded" and report["binary"] is True
    assert set(report["scorers"]) == {"safety", "combined"}
    safety = report["scorers"]["safety"]
    # The loop is clean language, so on profanity alone it beats the good fever answer:
    # AUC 5 of 6 positive-negative comparisons; within prompts 2 of 3 pairs.
    assert safety["auc"] == pytest.approx(5 / 6)
    assert safety["pairwise_accuracy"] == pytest.approx(2 / 3)
    assert safety["spearman"] > 0

    bad = cli("eval-scorer", "--data", str(data), "--policy", str(fake_policy_file),
              "--scorer", "judge")  # fmt: skip
    assert bad.returncode == 2
    assert "has no scorer 'judge'" in bad.stderr and "safety, rules" in bad.stderr


def test_graded_labels_give_spearman_without_auc() -> None:
    items = [Graded("p", text, grade) for text, grade in (("a", 3), ("b", 2), ("c", 0))]
    values = {"a": 0.9, "b": 0.5, "c": 0.1}

    def score(prompt: str, answers: list[str]) -> list[Candidate]:
        return [Candidate(a, scores={"s": values[a]}, score=values[a]) for a in answers]

    report = evaluate_graded(items, score, {"s": lambda x: x})
    assert report["binary"] is False
    assert report["scorers"]["s"]["auc"] is None
    assert report["scorers"]["s"]["spearman"] == pytest.approx(1.0)
    assert report["scorers"]["s"]["pairwise_accuracy"] == 1.0
    assert report["scorers"]["combined"]["spearman"] == pytest.approx(1.0)


def test_bad_data_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.csv"
    missing.write_text("prompt,response\nq,a\n")
    with pytest.raises(InputError, match="missing field\\(s\\) label"):
        load_data(missing)
    bad_label = tmp_path / "bad.jsonl"
    bad_label.write_text('{"prompt": "q", "response": "a", "label": "great"}\n')
    with pytest.raises(InputError, match="label 'great' is not a number"):
        load_data(bad_label)
    with pytest.raises(InputError, match="does not exist"):
        load_data(tmp_path / "nope.jsonl")
    words = tmp_path / "words.jsonl"
    words.write_text('{"prompt": "q", "response": "a", "label": "good"}\n')
    assert load_data(words) == [Graded("q", "a", 1.0)]


def test_graded_jsonl_keeps_a_response_that_holds_a_unicode_line_separator(tmp_path: Path) -> None:
    # A raw U+2028 is valid inside a JSON string; only "\n" ends a JSON line.
    path = tmp_path / "graded.jsonl"
    row = {"prompt": "p", "response": "one\u2028two", "label": 1}
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    (item,) = load_data(path)
    assert isinstance(item, Graded) and item.response == "one\u2028two"
