"""The documentation names every registered kind, so that it cannot drift from the code."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from aligntime import registry

README = Path(__file__).resolve().parents[2] / "README.md"


def _table_kinds(heading: str) -> set[str]:
    """The backticked first cells of the table that follows a bold ``heading`` line."""
    text = README.read_text("utf-8")
    start = text.index(f"**{heading}**")
    rows = re.findall(r"^\| `([^`]+)` \|", text[start:].split("\n\n", 2)[1], flags=re.M)
    return set(rows)


@pytest.mark.parametrize(("kind", "heading"), [("scorer", "Scorers."), ("strategy", "Strategies.")])
def test_every_registered_kind_has_a_row_in_the_readme_table(
    kind: registry.Kind, heading: str
) -> None:
    documented = _table_kinds(heading)
    missing = sorted(set(registry.available(kind)) - documented)
    assert not missing, f"README's {heading} table lacks {missing}"


def test_policies_schema_lists_every_registered_kind_with_described_options() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "aligntime", "policies", "schema", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    shown = json.loads(proc.stdout)
    for kind in registry.KINDS:
        assert sorted(shown[kind]) == sorted(registry.available(kind)), kind
    # Field docstrings reach the schema: every option of the shipped kinds is described.
    for kind, name in [("scorer", "classifier"), ("strategy", "rejection"), ("generator", "fake")]:
        props = shown[kind][name]["properties"]
        assert props and all(p.get("description") for p in props.values()), (kind, name)
    text = subprocess.run(
        [sys.executable, "-m", "aligntime", "policies", "schema"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for kind in ("scorer", "strategy"):
        for name in registry.available(kind):
            assert name in text, name
