"""One-token probes on the embedded engine run one at a time per event loop."""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from typing import Any

from aligntime.generators.llamacpp import LlamaCppEngine


class CountingEngine(LlamaCppEngine):
    """The engine's gating with a chat that records how many calls overlap."""

    def __init__(self) -> None:  # no model: only the probe gate is under test
        self._probe_gates = weakref.WeakKeyDictionary()
        self.active = 0
        self.peak = 0
        self.lock = threading.Lock()

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(0.01)
        with self.lock:
            self.active -= 1
        return {"echo": body["i"]}


def test_probes_on_one_engine_never_overlap_and_keep_their_replies() -> None:
    engine = CountingEngine()

    async def run() -> list[dict[str, Any]]:
        return await asyncio.gather(*(engine.probe({"i": i}) for i in range(8)))

    replies = asyncio.run(run())
    assert [r["echo"] for r in replies] == list(range(8))
    assert engine.peak == 1


def test_each_event_loop_gets_its_own_gate() -> None:
    engine = CountingEngine()
    # A gate bound to a finished loop must not break a later one (tests and the
    # CLI each run their own loop against the shared engine).
    assert asyncio.run(engine.probe({"i": 1})) == {"echo": 1}
    assert asyncio.run(engine.probe({"i": 2})) == {"echo": 2}
