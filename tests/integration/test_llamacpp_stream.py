"""llama.cpp's own token stream: a partial answer continued token by token, and stopped."""

from __future__ import annotations

import asyncio
import time

import pytest

from aligntime.generators.llamacpp import LlamaCppGenerator, LlamaCppOptions
from aligntime.types import Candidate, GenerationParams, Message

pytestmark = pytest.mark.slow

MESSAGES = [Message("user", "Name three colours.")]


def test_the_stream_continues_the_prefix_token_by_token_and_stops_when_closed() -> None:
    generator = LlamaCppGenerator(LlamaCppOptions(parallel=2, context=512))
    generator.load()
    params = GenerationParams(seed=3, temperature=0.0)

    async def stream(max_tokens: int, stop_after: int | None = None) -> list[Candidate]:
        pieces = generator.stream(MESSAGES, "Sure, the", max_tokens, params)
        out: list[Candidate] = []
        async for piece in pieces:
            out.append(piece.candidates[0])
            if stop_after is not None and len(out) == stop_after:
                await pieces.aclose()
                break
        return out

    t0 = time.perf_counter()
    pieces = asyncio.run(stream(12))
    twelve_s = time.perf_counter() - t0
    assert 1 <= len(pieces) <= 12 and all(p.tokens == 1 for p in pieces)
    assert "".join(p.text for p in pieces).strip()
    assert all(p.finish_reason == "length" for p in pieces[:-1])
    # Greedy decoding: the stream writes what one whole continuation writes.
    whole = asyncio.run(generator.extend(MESSAGES, ["Sure, the"], 12, params)).candidates[0]
    assert "".join(p.text for p in pieces) == whole.text
    # Closed after two tokens of 200: closing waits for the slot, which stops at once
    # (200 tokens would take about 16 times as long as the 12 above).
    t0 = time.perf_counter()
    assert len(asyncio.run(stream(200, stop_after=2))) == 2
    assert time.perf_counter() - t0 < 4 * twelve_s + 5
    assert len(asyncio.run(stream(3))) <= 3
