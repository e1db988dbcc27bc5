"""llama.cpp's threads: every usable core by default, and a bounded spin at barriers."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from aligntime.generators import llamacpp
from aligntime.generators.llamacpp import (
    SPIN_COUNT,
    LlamaCppEngine,
    bound_spinning,
    default_threads,
)


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 2), (16, 16)])
def test_default_threads_is_the_usable_cores(
    monkeypatch: pytest.MonkeyPatch, cores: int, expected: int
) -> None:
    monkeypatch.setattr(llamacpp.os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert default_threads() == expected


class _Params:
    """The parts of xllamacpp.CommonParams the engine sets."""

    def __init__(self) -> None:
        self.model = types.SimpleNamespace(path="")
        self.cpuparams = types.SimpleNamespace(n_threads=0)
        self.cpuparams_batch = types.SimpleNamespace(n_threads=0)


def _fake_xllamacpp(seen: list[Any]) -> types.ModuleType:
    module = types.ModuleType("xllamacpp")
    module.CommonParams = _Params  # type: ignore[attr-defined]
    module.Server = lambda params: seen.append(params) or object()  # type: ignore[attr-defined]
    return module


@pytest.mark.parametrize(("threads", "expected"), [(None, 4), (2, 2)])
def test_the_engine_gives_llama_cpp_the_default_unless_told(
    monkeypatch: pytest.MonkeyPatch, threads: int | None, expected: int
) -> None:
    seen: list[Any] = []
    monkeypatch.setitem(sys.modules, "xllamacpp", _fake_xllamacpp(seen))
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("GOMP_SPINCOUNT", "7")  # restored after the test
    monkeypatch.setattr(llamacpp.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    LlamaCppEngine(Path("model.gguf"), parallel=2, context=256, threads=threads)
    (params,) = seen
    assert params.cpuparams.n_threads == expected
    assert params.cpuparams_batch.n_threads == expected


def _unset(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Unset, and have the variable restored after the test even if the code sets it."""
    for name in names:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_the_spin_is_bounded_before_llama_cpp_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    spin_when_loaded: list[str | None] = []
    fake = _fake_xllamacpp(seen)
    make_server = fake.Server  # type: ignore[attr-defined]

    def server(params: Any) -> Any:
        spin_when_loaded.append(llamacpp.os.environ.get("GOMP_SPINCOUNT"))
        return make_server(params)

    fake.Server = server  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "xllamacpp", fake)
    _unset(monkeypatch, "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    LlamaCppEngine(Path("model.gguf"), parallel=2, context=256, threads=1)
    assert spin_when_loaded == [SPIN_COUNT]


@pytest.mark.parametrize("name", ["OMP_WAIT_POLICY", "GOMP_SPINCOUNT"])
def test_a_users_wait_policy_wins(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    _unset(monkeypatch, "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    monkeypatch.setenv(name, "ACTIVE" if name == "OMP_WAIT_POLICY" else "5")
    bound_spinning()
    assert llamacpp.os.environ.get("GOMP_SPINCOUNT") == (None if name == "OMP_WAIT_POLICY" else "5")
