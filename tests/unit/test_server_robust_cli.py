"""Command-line inputs that crashed instead of erroring (issue 18, items 7 and 8).

Each is one clear ``error:`` line and exit code 2: binary bytes on standard
input, a temperature that is not a finite number in range, and a policy whose
YAML aliases expand without bound (a "billion laughs" bomb), wherever it sits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from aligntime.errors import ConfigError
from aligntime.policy.loader import parse_policy

FAKE = """
name: f
generator: {backend: fake, responses: ["Boil it."]}
n: 1
scorers:
  - {name: rules, kind: rules}
"""


def _aligntime(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "aligntime", *args],
        capture_output=True,
        input=stdin,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )


def _one_error_line(result: subprocess.CompletedProcess[bytes]) -> str:
    err = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    return err.splitlines()[0]


def test_binary_standard_input_is_refused_with_one_line(tmp_path: Path) -> None:
    policy = tmp_path / "f.yaml"
    policy.write_text(textwrap.dedent(FAKE))
    noise = bytes(range(256)) * 32  # 8 KiB with every byte value, invalid UTF-8
    line = _one_error_line(_aligntime("run", "-", "--policy", str(policy), stdin=noise))
    assert "standard input" in line and "UTF-8" in line
    ok = _aligntime("run", "-", "--policy", str(policy), "--json", stdin=b"Boil an egg?")
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "-1"])
def test_temperature_must_be_a_finite_number_in_range(tmp_path: Path, value: str) -> None:
    policy = tmp_path / "f.yaml"
    policy.write_text(textwrap.dedent(FAKE))
    line = _one_error_line(
        _aligntime("run", "Boil an egg?", "--policy", str(policy), "--temperature", value)
    )
    assert "--temperature" in line


BOMB = """
name: bomb
generator:
  backend: openai
  base_url: http://127.0.0.1:9/v1
  model: m
  extra_body:
    lol:
      a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
      b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
      c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
      d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
      e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
      f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
      g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
      h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
      i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
n: 1
"""


def test_a_yaml_alias_bomb_is_refused_quickly_naming_where_it_is() -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        parse_policy(textwrap.dedent(BOMB), "bomb.yaml")
    assert time.monotonic() - started < 2
    message = info.value.message
    assert message.startswith("bomb.yaml:") and "generator.extra_body.lol" in message
    assert "alias" in message


def test_a_recursive_alias_is_refused() -> None:
    text = textwrap.dedent(FAKE) + "extra: &loop [*loop]\n"
    with pytest.raises(ConfigError, match="refers to itself"):
        parse_policy(text, "loop.yaml")


def test_ordinary_aliases_still_work() -> None:
    text = textwrap.dedent(
        """
        name: shared
        generator: {backend: fake, responses: &answers ["Boil it.", "Poach it."]}
        n: 2
        scorers:
          - {name: rules, kind: rules}
        """
    )
    assert parse_policy(text).generator.options()["responses"] == ["Boil it.", "Poach it."]


def test_policies_validate_refuses_the_bomb(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(textwrap.dedent(BOMB))
    line = _one_error_line(_aligntime("policies", "validate", str(path)))
    assert "alias" in line
