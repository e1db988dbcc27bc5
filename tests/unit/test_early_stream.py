"""Stream while selecting: the windowed output gate, and ``stream_mode: "early"`` served."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from aligntime.aligner import Aligner, build
from aligntime.generators.fake import FakeGenerator, FakeOptions
from aligntime.policy.loader import parse_policy
from aligntime.request import AlignRequest
from aligntime.scorers.base import Scorer
from aligntime.scorers.combine import Gate, ScorerWeighting, combine
from aligntime.server import ServerOptions
from aligntime.server.app import create_app
from aligntime.server.audit import AuditLog, read_requests
from aligntime.server.batching import BatchingScorer
from aligntime.server.early_stream import NOTICE_SEPARATOR
from aligntime.server.metering import MeteredGenerator
from aligntime.server.metrics import Metrics
from aligntime.server.service import AlignmentService
from aligntime.server.testing import LiveServer
from aligntime.strategies.adaptive import Adaptive, AdaptiveOptions
from aligntime.strategies.early_rejection import EarlyRejection, EarlyRejectionOptions
from aligntime.streaming import EarlyAnswer, EarlyStreamOptions, WindowGate
from aligntime.types import Candidate, GenerationParams, Message

MARK = "MARKER"
FALLBACK = "Sorry, I cannot answer that safely right now."
CLEAN = " ".join(f"word{i}" for i in range(60))
# The same opening as CLEAN, then the marker at word 40: a later window must fail.
TAINTED = " ".join(f"word{i}" if i != 40 else MARK for i in range(60))


class Marker(Scorer):
    """1.0 for a text holding the marker, else 0.0 (gated at 0.5): a stand-in safety model
    whose every verdict is recorded with the text it judged."""

    direction = "lower"

    def __init__(self, name: str = "marker") -> None:
        self.name = name
        self.verdicts: list[tuple[str, bool]] = []

    async def score(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        out = []
        for c in candidates:
            bad = MARK in c.text
            self.verdicts.append((c.text, not bad))
            out.append(1.0 if bad else 0.0)
        return out


# --- the window gate, property-style ---------------------------------------------------


def _checker(marker: Marker) -> ScorerWeighting:
    return ScorerWeighting(marker.name, 1.0, Gate(None, 0.5), marker)


@pytest.mark.parametrize("seed", range(40))
def test_no_released_window_ever_failed_a_gate(seed: int) -> None:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(rng.randint(1, 80))]
    if rng.random() < 0.7:
        words.insert(rng.randrange(len(words) + 1), MARK)
    marker = Marker()
    weighting = _checker(marker)

    async def check(answer: Candidate) -> Candidate:
        (raw,) = await marker.score([], [answer])
        return combine([answer], {marker.name: [raw]}, [weighting], {})[0]

    async def run() -> tuple[WindowGate, list[str]]:
        gate = WindowGate(check, check, window_tokens=rng.randint(1, 12))
        released: list[str] = []
        i = 0
        while i < len(words) and not gate.failed:
            k = rng.randint(1, 5)  # pieces of a few tokens, as a backend's stream gives
            piece = "".join(" " + w for w in words[i : i + k])
            released.append(await gate.add(piece, len(words[i : i + k])))
            i += k
        released.append(await gate.finish("stop"))
        return gate, released

    gate, released = asyncio.run(run())
    sent = "".join(released)
    assert sent == gate.released
    # Every prefix that went out was judged, as a whole, and passed.
    passed = {text for text, ok in marker.verdicts if ok}
    prefix = ""
    for piece in released:
        if piece:
            prefix += piece
            assert prefix in passed
    assert MARK not in sent
    assert gate.failed == (MARK in words)
    if MARK not in words:
        assert sent == "".join(" " + w for w in words)


def test_the_default_stream_is_extend_in_blocks() -> None:
    gen = FakeGenerator(FakeOptions(responses=[CLEAN]))

    async def run() -> list[Candidate]:
        msgs = [Message("user", "count")]
        pieces = gen.stream(msgs, "word0 word1", 100, GenerationParams(), block_tokens=7)
        return [g.candidates[0] async for g in pieces]

    pieces = asyncio.run(run())
    assert "word0 word1" + "".join(p.text for p in pieces) == CLEAN
    assert sum(p.tokens for p in pieces) == 58 and all(p.tokens <= 7 for p in pieces)
    assert pieces[-1].finish_reason == "stop"
    assert [p.finish_reason for p in pieces[:-1]] == ["length"] * (len(pieces) - 1)


# --- served ------------------------------------------------------------------------------

POLICY = f"""
name: p
generator: {{backend: fake, responses: [{{responses}}], max_tokens: 100}}
n: 3
scorers:
  - {{name: marker, kind: rules, gate: {{max: 0.5}}}}
  - {{name: rules, kind: rules}}
input:
  scorers:
    - {{name: tox, kind: classifier, harm: true, refuse: 0.6}}
  refusal: "I will not answer that."
fallback: "{FALLBACK}"
"""


def _serve(responses: list[str], db: Path) -> tuple[AlignmentService, Marker]:
    quoted = ", ".join(json.dumps(r) for r in responses)
    policy = parse_policy(POLICY.replace("{responses}", quoted))
    marker = Marker()
    scorers = [
        BatchingScorer(
            marker if s.name == "marker" else build("scorer", s.kind, s.options(), name=s.name)
        )
        for s in policy.scorers
    ]
    generator = MeteredGenerator(build("generator", "fake", policy.generator.options()))
    aligner = Aligner(policy, generator=generator, scorers=scorers)
    options = ServerOptions(audit_db=db)
    return AlignmentService([aligner], options, Metrics(), AuditLog(db)), marker


def _stream(live: LiveServer, content: str) -> tuple[list[dict[str, Any]], list[str]]:
    body = {
        "model": "p",
        "messages": [{"role": "user", "content": content}],
        "stream": True,
        "aligntime": {"stream_mode": "early"},
    }
    with httpx.stream("POST", live.url + "/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    pieces = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]]
    return chunks, pieces


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "audit.db"


def test_a_clean_answer_streams_and_the_audit_row_is_what_was_sent(db: Path) -> None:
    service, marker = _serve([CLEAN], db)
    with LiveServer(create_app(service)) as live:
        chunks, pieces = _stream(live, "Count for me.")
    service.close()
    sent = "".join(pieces)
    assert sent == CLEAN
    assert len([p for p in pieces if p]) > 3  # in pieces, not one block
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == "stop"
    ext = last["aligntime"]
    assert ext["strategy"] == "early_stream" and not ext["fallback"]
    assert ext["timings"]["first_content_s"] > 0
    (row,) = read_requests(db)
    assert row["answer"] == sent and row["stream"] is True
    chosen = [c for c in row["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["text"] == sent
    # The other two drafts were dropped unfinished at the one check, after 16 words
    # (keep a fifth, rounded up: 3 -> 1).
    dropped = [c for c in row["candidates"] if not c["chosen"]]
    assert [c["tokens"] for c in dropped] == [16, 16]
    # Every window of the released answer was judged before it went out.
    assert (sent, True) in marker.verdicts


def test_a_failing_later_window_ends_with_content_filter_and_the_notice(db: Path) -> None:
    service, marker = _serve([TAINTED], db)
    with LiveServer(create_app(service)) as live:
        chunks, pieces = _stream(live, "Count for me.")
        metrics = httpx.get(live.url + "/metrics").text
    service.close()
    sent = "".join(pieces)
    assert MARK not in sent
    released, notice = sent.split(NOTICE_SEPARATOR)
    assert notice == FALLBACK
    # Windows of 16 words: words 0-31 passed and went out; the window holding word 40 failed.
    assert released == " ".join(f"word{i}" for i in range(32))
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == "content_filter"
    assert last["aligntime"]["fallback"] and last["aligntime"]["best"] is None
    (row,) = read_requests(db)
    assert row["answer"] == sent
    assert row["fallback"] and row["best"] is None
    failed = [c for c in row["candidates"] if c["gate_failures"] == ["marker"]]
    assert len(failed) == 1 and MARK in failed[0]["text"]
    assert not any(ok for text, ok in marker.verdicts if MARK in text)
    assert 'reason="output_window"' in metrics


def test_the_input_gate_applies_first(db: Path) -> None:
    service, marker = _serve([CLEAN], db)
    with LiveServer(create_app(service)) as live:
        chunks, pieces = _stream(live, "You stupid idiot, damn you.")
        generator = live.app.state.service.served["p"].aligner.generator
    service.close()
    assert "".join(pieces) == "I will not answer that."
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    assert chunks[-1]["aligntime"]["input"]["action"] == "refuse"
    assert isinstance(generator.inner, FakeGenerator) and generator.inner.calls == 0
    assert marker.verdicts == []
    (row,) = read_requests(db)
    assert row["answer"] == "I will not answer that."


# --- selection ---------------------------------------------------------------------------

SMALL = f"""
name: small
generator: {{backend: fake, responses: [{json.dumps(CLEAN)}], max_tokens: 100}}
n: 4
scorers:
  - {{name: rules, kind: rules}}
"""


def _answer(options: EarlyStreamOptions) -> EarlyAnswer:
    aligner = Aligner(parse_policy(SMALL))

    async def run() -> EarlyAnswer:
        early = EarlyAnswer(aligner, AlignRequest([Message("user", "Count.")]), options)
        await early.select()
        assert "".join([t async for t in early.texts()]) == CLEAN
        return early

    try:
        return asyncio.run(run())
    finally:
        aligner.close()


def test_selection_prunes_by_keep_or_stops_at_the_threshold() -> None:
    # keep half: 4 -> 2 after 16 words, 2 -> 1 after 32.
    pruned = _answer(EarlyStreamOptions(keep=0.5)).result
    assert pruned is not None and pruned.best == 3
    assert sorted(c.tokens for c in pruned.candidates[:3]) == [16, 16, 32]
    assert {c.state for c in pruned.candidates[:3]} == {"rejected"}
    # adaptive's rule: the first partial answer that reaches the threshold is the survivor.
    early = _answer(EarlyStreamOptions(keep=0.5, threshold=0.0)).result
    assert early is not None and [c.tokens for c in early.candidates[:3]] == [16, 16, 16]
    assert early.candidates[3].text == CLEAN and early.candidates[3].passed


def test_the_policy_strategy_sets_the_selection() -> None:
    er = EarlyRejection(EarlyRejectionOptions(chunk_tokens=8, keep=0.25))
    assert EarlyStreamOptions.for_strategy(er) == EarlyStreamOptions(chunk_tokens=8, keep=0.25)
    adaptive = Adaptive(AdaptiveOptions(threshold=0.7))
    assert EarlyStreamOptions.for_strategy(adaptive).threshold == 0.7
    assert EarlyStreamOptions.for_strategy(adaptive, window_tokens=4).window_tokens == 4
