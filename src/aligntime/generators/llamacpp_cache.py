"""Prompt-prefix reuse on the embedded llama.cpp engine, counted from its own figures.

What llama.cpp's server loop (``xllamacpp``) does, left at its defaults: each
slot keeps the tokens of its last prompt in the KV cache (``cache_prompt``); a
request goes to the idle slot whose cached prompt shares the longest prefix
with its own (``slot_prompt_similarity``); and a prompt evicted from a slot is
kept in host memory and can be restored into the slot that next needs it
(``cache_ram_mib``). So the policy's shared prefix (system text, principles,
demonstrations) and the judge's rubric are evaluated once per slot and reused
by later requests that land there: measured on SmolLM2 with the default policy,
a second request evaluates 14 of its 247 prompt tokens.

Each reply's ``timings`` say how many prompt tokens llama.cpp evaluated
(``prompt_n``) and how many it found in a cache (``cache_n``);
:class:`PromptCounters` adds them up per engine, so the reuse is measured from
the engine's own figures (``bench/embedded.py`` prints them per request).

Tried and left out: filling every slot of a fresh engine with the first prompt
(one ``n`` = slots request, whose children get a copy of the parent's cache).
In xllamacpp 2026.10 the children's copies were not reused afterwards: of a
burst of four requests after it, one found the prefix and three evaluated it
again, the same as without it.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class PromptTokens:
    """Prompt tokens of the requests an engine has answered: ``prompt`` in all, of
    which llama.cpp ``evaluated`` some (not found in a slot's cache) and ``reused``
    the rest from a cache."""

    requests: int = 0
    prompt: int = 0
    evaluated: int = 0
    reused: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class PromptCounters:
    """Running totals of llama.cpp's own prompt timings (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals = PromptTokens()

    def record(self, reply: dict[str, Any]) -> None:
        """Add one reply's ``timings`` (a reply without them counts as a request only)."""
        timings = reply.get("timings") or {}
        evaluated = _int(timings.get("prompt_n"))
        reused = _int(timings.get("cache_n"))
        with self._lock:
            t = self._totals
            self._totals = PromptTokens(
                t.requests + 1,
                t.prompt + evaluated + reused,
                t.evaluated + evaluated,
                t.reused + reused,
            )

    def snapshot(self) -> PromptTokens:
        """The totals so far; subtract two snapshots for the tokens of a stretch of work."""
        with self._lock:
            return self._totals


def since(before: PromptTokens, after: PromptTokens) -> PromptTokens:
    """The tokens counted between two snapshots."""
    return PromptTokens(
        after.requests - before.requests,
        after.prompt - before.prompt,
        after.evaluated - before.evaluated,
        after.reused - before.reused,
    )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0
