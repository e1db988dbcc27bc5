"""The llama.cpp engine's prompt-token counters."""

from __future__ import annotations

import threading

from aligntime.generators.llamacpp_cache import PromptCounters, PromptTokens, since


def test_counters_add_up_llamacpp_timings() -> None:
    counters = PromptCounters()
    first = counters.snapshot()
    counters.record({"timings": {"prompt_n": 247, "cache_n": 0}})
    middle = counters.snapshot()
    counters.record({"timings": {"prompt_n": 14, "cache_n": 233}})
    counters.record({"choices": []})  # no timings: a request, no tokens
    assert since(first, middle) == PromptTokens(1, 247, 247, 0)
    assert since(middle, counters.snapshot()) == PromptTokens(2, 247, 14, 233)
    assert counters.snapshot().to_dict() == {
        "requests": 3,
        "prompt": 494,
        "evaluated": 261,
        "reused": 233,
    }


def test_counters_ignore_malformed_timings() -> None:
    counters = PromptCounters()
    counters.record({"timings": {"prompt_n": "12", "cache_n": -3}})
    assert counters.snapshot() == PromptTokens(1, 0, 0, 0)


def test_counters_are_thread_safe() -> None:
    counters = PromptCounters()
    reply = {"timings": {"prompt_n": 3, "cache_n": 5}}

    def record() -> None:
        for _ in range(500):
            counters.record(reply)

    threads = [threading.Thread(target=record) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counters.snapshot() == PromptTokens(2000, 16000, 6000, 10000)
