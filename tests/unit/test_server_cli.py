"""``aligntime serve`` refuses bad settings with an actionable error before it listens."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

from typer.testing import CliRunner

from aligntime.cli.main import app as cli
from aligntime.errors import ConfigError

FAKE = """
name: {name}
generator: {{backend: fake}}
n: 1
"""


def _invoke(*args: str) -> BaseException | None:
    return CliRunner().invoke(cli, ["serve", *args]).exception


def test_unknown_policy_is_named_with_a_suggestion() -> None:
    exc = _invoke("--policy", "defualt")
    assert isinstance(exc, ConfigError) and "did you mean 'default'" in str(exc)


def test_two_policies_with_one_name_are_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    for p in (a, b):
        p.write_text(textwrap.dedent(FAKE.format(name="same")))
    exc = _invoke("--policy", str(a), "--policy", str(b))
    assert isinstance(exc, ConfigError) and "both named 'same'" in str(exc)


def test_out_of_range_options_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(textwrap.dedent(FAKE.format(name="a")))
    exc = _invoke("--policy", str(path), "--batch-wait-ms", "50")
    assert isinstance(exc, ConfigError) and "batch_wait_ms" in str(exc)


def test_a_port_in_use_is_refused_with_a_hint(tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    path.write_text(textwrap.dedent(FAKE.format(name="a")))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        exc = _invoke("--policy", str(path), "--port", str(port))
    assert isinstance(exc, ConfigError) and "--port" in (exc.hint or "")
