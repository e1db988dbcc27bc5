"""llama.cpp's default thread count leaves one core to the rest of the process."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from aligntime.generators import llamacpp
from aligntime.generators.llamacpp import LlamaCppEngine, default_threads


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 1), (4, 3), (16, 15)])
def test_default_threads_is_the_usable_cores_less_one(
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


@pytest.mark.parametrize(("threads", "expected"), [(None, 3), (2, 2)])
def test_the_engine_gives_llama_cpp_the_default_unless_told(
    monkeypatch: pytest.MonkeyPatch, threads: int | None, expected: int
) -> None:
    seen: list[Any] = []
    monkeypatch.setitem(sys.modules, "xllamacpp", _fake_xllamacpp(seen))
    monkeypatch.setattr(llamacpp.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    LlamaCppEngine(Path("model.gguf"), parallel=2, context=256, threads=threads)
    (params,) = seen
    assert params.cpuparams.n_threads == expected
    assert params.cpuparams_batch.n_threads == expected
