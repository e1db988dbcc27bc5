"""The command line, run as a user runs it (a subprocess), on the fake backend."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


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


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys; from aligntime.cli.main import app; "
        "import typer.testing as t; r = t.CliRunner().invoke(app, ['--help']); "
        "assert r.exit_code == 0, r.output; assert 'run' in r.output; "
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_run_json_contract(fake_policy_file: Path) -> None:
    proc = cli("run", "What helps a fever?", "--policy", str(fake_policy_file), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert list(data) == [
        "prompt",
        "policy",
        "best",
        "fallback",
        "candidates",
        "usage",
        "timings",
        "input",
    ]
    assert data["input"] is None  # no input gate in this policy
    assert data["best"] == 0 and data["fallback"] is None
    assert data["candidates"][1]["passed"] is False
    assert set(data["usage"]) == {"prompt_tokens", "completion_tokens"}
    assert set(data["timings"]) == {"generate_s", "score_s", "total_s"}
    assert proc.stderr == ""


def test_run_table_explains_each_verdict(fake_policy_file: Path) -> None:
    proc = cli("run", "What helps a fever?", "--policy", str(fake_policy_file))
    assert proc.returncode == 0, proc.stderr
    assert "chosen" in proc.stdout
    assert "failed gate: safety" in proc.stdout
    assert "lower score" in proc.stdout


def test_run_reads_stdin(fake_policy_file: Path) -> None:
    proc = cli("run", "-", "--policy", str(fake_policy_file), "--json", stdin="hello there")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["prompt"] == "hello there"


def test_score_json_in_given_order(fake_policy_file: Path) -> None:
    proc = cli(
        "score",
        "--prompt",
        "What helps?",
        "Rest and drink water.",
        "You idiot.",
        "--policy",
        str(fake_policy_file),
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    cands = json.loads(proc.stdout)["candidates"]
    assert [c["text"] for c in cands] == ["Rest and drink water.", "You idiot."]
    assert cands[0]["passed"] and not cands[1]["passed"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", ""], "the prompt is empty"),
        (["run", "hi", "-n", "0"], "n must be between 1 and 8"),
        (["run", "hi", "-n", "99"], "n must be between 1 and 8"),
        (["run", "hi", "--template", "nope"], "unknown template 'nope'"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line(
    fake_policy_file: Path, args: list[str], message: str
) -> None:
    proc = cli(*args, "--policy", str(fake_policy_file))
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {message}")
    assert "Traceback" not in proc.stderr


def test_unknown_policy_suggests() -> None:
    proc = cli("run", "hi", "--policy", "defualt")
    assert proc.returncode == 2
    assert "unknown policy 'defualt'" in proc.stderr and "default" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_malformed_policy_names_file_line_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngenerator:\n  backend: fake\n  temprature: 2\n")
    proc = cli("policies", "validate", str(bad))
    assert proc.returncode == 2
    assert f"{bad}:4: generator.temprature: unknown field" in proc.stderr


def test_unknown_scorer_kind_in_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ngenerator: {backend: fake}\nscorers: [{name: j, kind: jugde}]\n")
    proc = cli("run", "hi", "--policy", str(bad))
    assert proc.returncode == 2 and "did you mean 'judge'" in proc.stderr


def test_missing_model_file_says_so(tmp_path: Path) -> None:
    pol = tmp_path / "p.yaml"
    pol.write_text("name: x\ngenerator: {backend: llamacpp, model: /no/such/model.gguf}\n")
    proc = cli("run", "hi", "--policy", str(pol))
    assert proc.returncode == 2
    assert "model file '/no/such/model.gguf' does not exist" in proc.stderr


def test_corrupt_model_file_says_so(tmp_path: Path) -> None:
    model = tmp_path / "broken.gguf"
    model.write_bytes(b"not a gguf file at all")
    pol = tmp_path / "p.yaml"
    pol.write_text(f"name: x\ngenerator: {{backend: llamacpp, model: {model}}}\n")
    proc = cli("run", "hi", "--policy", str(pol))
    assert proc.returncode == 2
    assert "could not load" in proc.stderr and "Traceback" not in proc.stderr


def test_failing_scorer_exits_2_and_debug_shows_traceback(tmp_path: Path) -> None:
    pol = tmp_path / "p.yaml"
    pol.write_text(
        "name: x\ngenerator: {backend: fake}\n"
        "scorers: [{name: rel, kind: embedding, model: /no/such/encoder}]\n"
    )
    proc = cli("run", "hi", "--policy", str(pol))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: scorer 'rel' failed")
    debug = cli("--debug", "run", "hi", "--policy", str(pol))
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_policies_list_and_show() -> None:
    proc = cli("policies", "list")
    assert proc.returncode == 0 and "default" in proc.stdout
    proc = cli("policies", "show", "default")
    assert proc.returncode == 0 and "best_of_n" in proc.stdout


def test_models_list_and_unknown_pull(isolated_cache: Path) -> None:
    proc = cli("models", "list")
    assert proc.returncode == 0 and "smollm2-135m-instruct" in proc.stdout
    proc = cli("models", "pull", "smolm2")
    assert proc.returncode == 2 and "did you mean" in proc.stderr


def test_chat_keeps_the_conversation_and_quits(fake_policy_file: Path) -> None:
    proc = cli(
        "chat",
        "--policy",
        str(fake_policy_file),
        "--candidates",
        stdin="What helps a fever?\n/reset\nAnd a cough?\n/exit\n",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("assistant>") == 2
    assert "Keep the child hydrated" in proc.stdout
    assert "conversation cleared" in proc.stderr


def test_score_table(fake_policy_file: Path) -> None:
    proc = cli(
        "score", "--prompt", "What helps?", "Rest.", "You idiot.", "--policy", str(fake_policy_file)
    )
    assert proc.returncode == 0, proc.stderr
    assert "failed gate: safety" in proc.stdout
