"""``aligntime export``: SFT, DPO and KTO rows from a batch output, an eval folder and an
audit log, read back with the ``datasets`` library's JSON loader as a TRL user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train_data import make_audit

from aligntime.export import ExportFilters, Group, Option, examples

POLICY = """
name: export-test
generator:
  backend: fake
  responses:
    - "Keep the child hydrated, let them rest, and call a doctor if the fever is high."
    - "the the the the the the the the the the the the the the the the"
    - "Rest."
n: 3
scorers:
  - {name: rules, kind: rules, max_repetition: 0.3, min_words: 3, gate: {min: 0.5}}
fallback: "Sorry."
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aligntime", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=120,
    )


@pytest.fixture
def batch_output(tmp_path: Path) -> Path:
    policy = tmp_path / "p.yaml"
    policy.write_text(POLICY)
    rows = tmp_path / "in.jsonl"
    rows.write_text(
        "".join(json.dumps({"id": i, "prompt": f"Fever {i}?"}) + "\n" for i in range(4))
    )
    out = tmp_path / "out.jsonl"
    proc = cli("batch", "-i", str(rows), "-o", str(out), "-p", str(policy))
    assert proc.returncode == 0, proc.stderr
    return out


def load(path: Path) -> object:
    import datasets

    return datasets.load_dataset("json", data_files=str(path), split="train")


def test_dpo_export_loads_with_datasets(batch_output: Path, tmp_path: Path) -> None:
    out = tmp_path / "dpo.jsonl"
    proc = cli(
        "export",
        "--from-batch",
        str(batch_output),
        "--format",
        "dpo",
        "-o",
        str(out),
        "--pairs",
        "2",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["rows"] == 8
    ds = load(out)
    assert ds.column_names == ["prompt", "chosen", "rejected"]  # type: ignore[attr-defined]
    first = ds[0]  # type: ignore[index]
    assert first["prompt"] == [{"role": "user", "content": "Fever 0?"}]
    assert first["chosen"][0]["content"].startswith("Keep the child")
    assert first["chosen"][0]["role"] == "assistant"
    # both other answers failed a gate (repetition, too short): rejected, whatever the margin
    rejected = {r[0]["content"] for r in ds["rejected"]}  # type: ignore[index]
    assert rejected == {"the the the the the the the the the the the the the the the the", "Rest."}


def test_sft_and_kto(batch_output: Path, tmp_path: Path) -> None:
    sft, kto = tmp_path / "sft.jsonl", tmp_path / "kto.jsonl"
    assert (
        cli("export", "--from-batch", str(batch_output), "-f", "sft", "-o", str(sft)).returncode
        == 0
    )
    ds = load(sft)
    assert ds.column_names == ["prompt", "completion"] and len(ds) == 4  # type: ignore[attr-defined,arg-type]
    assert (
        cli("export", "--from-batch", str(batch_output), "-f", "kto", "-o", str(kto)).returncode
        == 0
    )
    ds = load(kto)
    assert ds.column_names == ["prompt", "completion", "label"]  # type: ignore[attr-defined]
    assert ds["label"] == [True, False] * 4  # type: ignore[index]


def test_filters_margin_and_gate() -> None:
    group = Group(
        [{"role": "user", "content": "q"}],
        [
            Option("best", 0.9, True),
            Option("close", 0.85, True),
            Option("far", 0.3, True),
            Option("unsafe", 0.95, False),
        ],
        0,
        "test",
    )
    rows = list(examples([group], "dpo", ExportFilters(min_margin=0.1, pairs=5)))
    assert [r["rejected"][0]["content"] for r in rows] == [
        "unsafe",
        "far",
    ]  # "close" is within the margin
    failed = Group(group.messages, [Option("bad", 0.9, False), Option("x", 0.1, True)], 0, "t")
    assert list(examples([failed], "sft", ExportFilters())) == []
    assert len(list(examples([failed], "sft", ExportFilters(only_passed=False)))) == 1
    assert list(examples([group], "sft", ExportFilters(min_score=0.95))) == []
    assert (
        list(examples([Group(group.messages, group.options, None, "t")], "sft", ExportFilters()))
        == []
    )


def test_from_eval_picks_the_best_eligible(tmp_path: Path) -> None:
    record = {
        "prompt": "How?",
        "candidates": [
            {"text": "a", "score": 0.2, "passed": True},
            {"text": "b", "score": 0.9, "passed": False},
            {"text": "c", "score": 0.7, "passed": True},
        ],
    }
    (tmp_path / "results.jsonl").write_text(json.dumps(record) + "\n")
    out = tmp_path / "e.jsonl"
    proc = cli("export", "--from-eval", str(tmp_path), "-f", "dpo", "-o", str(out), "--pairs", "3")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["chosen"][0]["content"] for r in rows} == {"c"}
    assert [r["rejected"][0]["content"] for r in rows] == ["b", "a"]


def test_from_audit(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    make_audit(db)
    out = tmp_path / "a.jsonl"
    proc = cli("export", "--from-audit", str(db), "-f", "sft", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["completion"][0]["content"] == "I can't help with that."
    assert row["prompt"] == [{"role": "user", "content": "How do I pick a lock?"}]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-f", "ppo", "--from-batch", "x"], "--format must be one of sft, dpo, kto"),
        (["-f", "dpo"], "exactly one of --from-batch"),
        (["-f", "dpo", "--from-batch", "missing.jsonl"], "does not exist"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    proc = cli("export", "-o", str(tmp_path / "o.jsonl"), *args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
