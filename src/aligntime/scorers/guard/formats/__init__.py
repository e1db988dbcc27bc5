"""The guard prompt formats, one module per model family, by their ``format`` name."""

from __future__ import annotations

from typing import Literal

from aligntime.scorers.guard.formats.base import GuardFormat, GuardPrompt, Turn, guard_turns
from aligntime.scorers.guard.formats.granite_guardian import GraniteGuardian3
from aligntime.scorers.guard.formats.llama_guard import LlamaGuard3, LlamaGuard4
from aligntime.scorers.guard.formats.qwen3guard import Controversial, Qwen3Guard
from aligntime.scorers.guard.formats.shieldgemma import ShieldGemma
from aligntime.scorers.guard.formats.wildguard import WildGuard

FormatName = Literal[
    "llama-guard-3", "llama-guard-4", "shieldgemma", "granite-guardian-3", "wildguard", "qwen3guard"
]
"""The values of the guard scorer's ``format`` option."""

FORMATS: dict[str, type[GuardFormat]] = {
    cls.name: cls
    for cls in (LlamaGuard3, LlamaGuard4, ShieldGemma, GraniteGuardian3, WildGuard, Qwen3Guard)
}


def make_format(name: str, *, controversial: Controversial = "unsafe") -> GuardFormat:
    """The format called ``name`` (``controversial`` applies to qwen3guard only)."""
    if name == Qwen3Guard.name:
        return Qwen3Guard(controversial)
    return FORMATS[name]()


__all__ = [
    "FORMATS",
    "Controversial",
    "FormatName",
    "GuardFormat",
    "GuardPrompt",
    "Turn",
    "guard_turns",
    "make_format",
]
