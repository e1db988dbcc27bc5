"""Shared fixtures: policies on the fake backend, and an isolated model cache."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

FAKE_POLICY = """
name: fake-test
generator:
  backend: fake
  responses:
    - "Keep the child hydrated, let them rest, and call a doctor if the fever is high."
    - "You idiot, figure it out yourself, damn it."
    - "the the the the the the the the the the the the the the the the"
n: 3
max_n: 8
prompt:
  system: "Be helpful."
  principles: ["Stay on topic."]
  demonstrations:
    - {user: "Hi", assistant: "Hello! How can I help?"}
  templates:
    concise: {prompt: "{prompt} (briefly)"}
scorers:
  - {name: safety, kind: classifier, weight: 0.5, gate: {max: 0.6}}
  - {name: rules, kind: rules, weight: 1.0}
strategy: {kind: best_of_n}
fallback: "Sorry, no good answer."
"""


@pytest.fixture
def fake_policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "fake.yaml"
    path.write_text(textwrap.dedent(FAKE_POLICY))
    return path


@pytest.fixture
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ALIGNTIME_HOME so a test can never touch the user's cache."""
    home = tmp_path / "home"
    monkeypatch.setenv("ALIGNTIME_HOME", str(home))
    return home
