"""The command line behaves like other click programs: one test per convention."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from aligntime.cli import main as cli_main


def in_process(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``aligntime ARGS`` in this process: exit code, stdout, stderr."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main(args)
        sys.exit(0)
    code = exit_info.value.code
    captured = capsys.readouterr()
    return (code if isinstance(code, int) else 1), captured.out, captured.err


def cli(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``aligntime ARGS`` as a user does, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "aligntime", *args],
        capture_output=True,
        text=True,
        input=stdin,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=120,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["runn", "hi"], "No such command 'runn'"),
        (["run", "hi", "--bogus"], "--bogus"),
        (["score", "an answer"], "Missing option '--prompt'"),
        (["models", "pull"], "Missing argument"),
        (["serve", "--port", "eighty"], "Invalid value for '--port'"),
    ],
)
def test_usage_errors_print_clicks_message_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = in_process(args, capsys)
    assert code == 2, err
    assert message in err and "Usage: aligntime" in err
    assert "unexpected" not in err and "Traceback" not in err


def test_a_usage_error_in_a_subprocess_exits_2() -> None:
    proc = cli("run", "hi", "--bogus")
    assert proc.returncode == 2
    assert proc.stderr.startswith("Usage: aligntime run") and "No such option" in proc.stderr
    assert "--bogus" in proc.stderr


def test_a_bare_group_shows_its_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = in_process(["models"], capsys)
    assert code == 2
    assert "Usage: aligntime models" in out + err and "unexpected" not in err


@pytest.mark.parametrize("args", [["-h"], ["run", "-h"], ["models", "list", "-h"]])
def test_dash_h_is_help(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = in_process(args, capsys)
    assert code == 0, err
    assert "Usage: aligntime" in out


def test_an_unexpected_error_exits_1_and_says_report_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken() -> list[str]:
        raise RuntimeError("a bug")

    monkeypatch.setattr("aligntime.cli.policies.preset_names", broken)
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main(["policies", "list"])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: unexpected RuntimeError: a bug")
    assert "hint: rerun with --debug" in err


def test_shell_completion_is_on(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "--install-completion" in in_process(["-h"], capsys)[1]
    monkeypatch.setenv("_ALIGNTIME_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "aligntime pol")
    monkeypatch.setenv("COMP_CWORD", "1")
    code, out, _ = in_process([], capsys)
    assert code == 0 and out.split() == ["policies"]


def test_listings_have_json(isolated_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = json.loads(in_process(["models", "list", "--json"], capsys)[1])
    assert models["cache"].startswith(str(isolated_cache))
    assert {"name": "smollm2-135m-instruct", "pulled": False}.items() <= models["models"][0].items()
    policies = json.loads(in_process(["policies", "list", "--json"], capsys)[1])["policies"]
    default = next(p for p in policies if p["name"] == "default")
    assert default["strategy"] == "best_of_n"
    assert {"name": "safety", "kind": "classifier"} in default["scorers"]


def test_tables_are_not_cut_when_piped() -> None:
    # A narrow COLUMNS would make rich cut cells to fit; a pipe gets them whole.
    proc = cli("models", "list", env={"COLUMNS": "40"})
    assert proc.returncode == 0, proc.stderr
    assert "qwen2.5-coder-0.5b-instruct" in proc.stdout
    assert "…" not in proc.stdout
    policies = cli("policies", "list", env={"COLUMNS": "40"}).stdout
    assert "safety(classifier), rules(rules)" in policies


def test_run_reads_a_piped_prompt_without_an_argument(fake_policy_file: Path) -> None:
    proc = cli("run", "--policy", str(fake_policy_file), "--json", stdin="piped question")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["prompt"] == "piped question"


def test_serve_reads_its_flags_from_the_environment(
    fake_policy_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from aligntime.server.testing import serve_subprocess

    monkeypatch.setenv("ALIGNTIME_POLICY", str(fake_policy_file))
    monkeypatch.setenv("ALIGNTIME_HOST", "127.0.0.1")
    monkeypatch.setenv("ALIGNTIME_MAX_N", "2")
    proc, url = serve_subprocess([])  # --port 0 on the command line wins over any variable
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
        import httpx

        models = httpx.get(f"{url}/v1/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == ["fake-test"]
        reply = httpx.post(
            f"{url}/v1/chat/completions",
            json={
                "model": "fake-test",
                "messages": [{"role": "user", "content": "hi"}],
                "best_of": 3,
            },
            timeout=10,
        )
        assert reply.status_code == 400, reply.text  # ALIGNTIME_MAX_N=2 applies
        # best_of is the number of candidates sampled (n is the choices returned).
        assert reply.json()["error"]["param"] == "best_of"
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    monkeypatch.setenv("ALIGNTIME_PORT", "eighty")
    code, _, err = in_process(["serve"], capsys)
    assert code == 2 and "Invalid value for '--port'" in err
