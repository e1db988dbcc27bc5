"""Shared fixtures: policies on the fake backend, and an isolated model cache."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

# --- optional hardware ---------------------------------------------------------------
# Tests marked `gpu` need a CUDA device. Where there is none they are not run, and the
# run's summary says how many were left out and why (never a silent skip). Set
# ALIGNTIME_REQUIRE_GPU=1 on a GPU runner to make a missing device fail them instead.

_GPU_LEFT_OUT = pytest.StashKey[int]()


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu or os.environ.get("ALIGNTIME_REQUIRE_GPU") == "1" or _cuda_available():
        return
    skip = pytest.mark.skip(reason="gpu: needs a CUDA device, and this machine has none")
    for item in gpu:
        item.add_marker(skip)
    config.stash[_GPU_LEFT_OUT] = len(gpu)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    left_out = config.stash.get(_GPU_LEFT_OUT, 0)
    if left_out:
        terminalreporter.write_sep(
            "-",
            f"{left_out} gpu test(s) not run: no CUDA device here "
            "(ALIGNTIME_REQUIRE_GPU=1 makes that a failure)",
            yellow=True,
        )


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
