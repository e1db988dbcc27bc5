"""``aligntime eval`` run as a user runs it (a subprocess), on the fake backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def cli(*args: str, columns: str | None = "200") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = columns
    return subprocess.run(
        [sys.executable, "-m", "aligntime", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_eval_json_and_rerun(fake_policy_file: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What helps a fever?\nHow do I boil an egg?\nWhat is 2 + 2?\n")
    out = tmp_path / "out"
    args = ["eval", "--policy", str(fake_policy_file), "--prompts", str(prompts)]
    args += ["--n", "1,2,4", "--strategies", "best_of_n,vote", "--heldout", "rules"]
    args += ["--out", str(out), "--limit", "2", "--draws", "20"]
    proc = cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["prompts"]["all"] == 2
    assert [(c["strategy"], c["n"]) for c in summary["results"]] == [
        ("best_of_n", 1), ("best_of_n", 2), ("best_of_n", 4),
        ("vote", 1), ("vote", 2), ("vote", 4),
    ]  # fmt: skip
    assert len((out / "results.jsonl").read_text().splitlines()) == 2

    # A table run over the same output reuses both prompts and adds the third. Piped
    # (not a terminal, no COLUMNS) the table is printed whole, not cut to 80 columns.
    proc = cli(*args[:-4], "--out", str(out), "--draws", "20", columns=None)
    assert proc.returncode == 0, proc.stderr
    assert "best_of_n" in proc.stdout and "report.html" in proc.stdout
    assert "…" not in proc.stdout and "held-out win" in proc.stdout and "ceiling" in proc.stdout
    assert len((out / "results.jsonl").read_text().splitlines()) == 3


def test_eval_errors_are_one_line(fake_policy_file: Path, tmp_path: Path) -> None:
    base = ["eval", "--policy", str(fake_policy_file), "--out", str(tmp_path / "o"), "--n", "1"]
    cases = {
        ("--prompts", "builtin:nope"): "unknown built-in prompt set",
        ("--prompts", "builtin:benign", "--n", "1,16"): "allows at most 8",
        ("--prompts", "builtin:benign", "--n", "two"): "is not a whole number",
        ("--prompts", "builtin:benign", "--strategies", "best_of_m"): "best_of_n",
        ("--prompts", "builtin:benign", "--heldout", "nope"): "neither a scorer of policy",
    }
    for extra, message in cases.items():
        proc = cli(*base, *extra)
        assert proc.returncode == 2, (extra, proc.stderr)
        assert message in proc.stderr, (extra, proc.stderr)
        assert "Traceback" not in proc.stderr
