"""``aligntime run`` and ``chat`` show the input gate's verdict (a subprocess, fake backend)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

POLICY = """
name: gated-cli
generator: {backend: fake, responses: ["Rest, fluids, and a doctor if it lasts."]}
n: 2
scorers:
  - {name: rules, kind: rules}
input:
  scorers:
    - {name: tox, kind: classifier, harm: true, refuse: 0.6}
  refusal: "I won't continue this conversation."
"""


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "aligntime", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env=env,
        timeout=120,
    )


@pytest.fixture
def gated_policy(tmp_path: Path) -> Path:
    path = tmp_path / "gated.yaml"
    path.write_text(POLICY)
    return path


def test_run_table_shows_a_refusal_above_the_answer(gated_policy: Path) -> None:
    proc = cli("run", "You stupid idiot, damn you", "--policy", str(gated_policy))
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert re.fullmatch(r"input gate: refuse \(harm [01]\.\d\d by 'tox'\)", first), first
    assert "refused by the input gate" in proc.stdout
    assert "I won't continue this conversation." in proc.stdout
    assert "0 prompt + 0 completion tokens" in proc.stdout
    assert "nothing was sampled" in proc.stderr


def test_run_json_carries_the_verdict(gated_policy: Path) -> None:
    proc = cli("run", "What helps a fever?", "--policy", str(gated_policy), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert list(data)[-1] == "input"
    verdict = data["input"]
    assert verdict["action"] == "pass" and verdict["decided_by"] is None
    assert set(verdict) == {"action", "scores", "decided_by", "harm", "failed", "seconds", "labels"}
    assert 0.0 <= verdict["harm"] < 0.6 and verdict["scores"] == {"tox": verdict["harm"]}
    assert data["best"] is not None and len(data["candidates"]) == 2

    refused = json.loads(
        cli("run", "You idiot, damn you", "--policy", str(gated_policy), "--json").stdout
    )
    assert refused["input"]["action"] == "refuse" and refused["input"]["decided_by"] == "tox"
    assert refused["candidates"] == [] and refused["best"] is None
    assert refused["fallback"] == "I won't continue this conversation."
    assert refused["usage"] == {"prompt_tokens": 0, "completion_tokens": 0}


def test_chat_shows_the_verdict_of_a_refused_turn(gated_policy: Path) -> None:
    proc = cli("chat", "--policy", str(gated_policy), stdin="What helps a fever?\nYou idiot!\n")
    assert proc.returncode == 0, proc.stderr
    assert "input gate: refuse (harm" in proc.stderr
    assert proc.stderr.count("input gate:") == 1  # a plain pass is not worth a line
    assert "I won't continue this conversation." in proc.stdout
