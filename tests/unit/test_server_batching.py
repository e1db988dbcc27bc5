"""Dynamic batching of scorer calls across concurrent requests."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from aligntime.scorers.base import Scorer, SyncScorer
from aligntime.scorers.classifier import SafetyClassifier
from aligntime.scorers.rules import RulesScorer
from aligntime.server.batching import BatchingScorer
from aligntime.types import Candidate, Message


def conv(text: str) -> list[Message]:
    return [Message("user", text)]


def cands(*texts: str) -> list[Candidate]:
    return [Candidate(text=t) for t in texts]


class Counting(SyncScorer):
    """Length of each answer; counts how often it is entered."""

    name = "length"

    def __init__(self, fail_on: str | None = None) -> None:
        self.calls = 0
        self.fail_on = fail_on

    def score_sync(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        self.calls += 1
        if self.fail_on and messages[-1].content == self.fail_on:
            raise ValueError("bad request")
        return [float(len(c.text)) for c in candidates]


class WithBatch(Scorer):
    name = "batched"

    def __init__(self) -> None:
        self.batches: list[int] = []

    async def score(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        raise AssertionError("score_batch should be used")

    async def score_batch(
        self, items: list[tuple[Sequence[Message], Sequence[Candidate]]]
    ) -> list[list[float]]:
        self.batches.append(len(items))
        return [[float(len(m[-1].content))] * len(c) for m, c in items]


def test_concurrent_calls_are_coalesced_and_results_go_back_to_their_caller() -> None:
    inner = WithBatch()
    sizes: list[int] = []
    scorer = BatchingScorer(inner, max_wait_ms=5, on_batch=lambda name, n: sizes.append(n))

    async def main() -> list[list[float]]:
        return await asyncio.gather(
            *(scorer.score(conv("x" * i), cands("a", "b")) for i in range(10))
        )

    results = asyncio.run(main())
    assert results == [[float(i)] * 2 for i in range(10)]
    assert inner.batches == [10] and sizes == [10]


class Slow(Scorer):
    """Takes ``seconds`` per batch; records when each batch started and its size."""

    name = "slow"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.batches: list[tuple[float, int]] = []

    async def score(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        raise AssertionError("score_batch should be used")

    async def score_batch(
        self, items: list[tuple[Sequence[Message], Sequence[Candidate]]]
    ) -> list[list[float]]:
        self.batches.append((time.perf_counter(), len(items)))
        await asyncio.sleep(self.seconds)
        return [[1.0] * len(c) for _, c in items]


def test_a_lone_call_is_not_delayed_and_later_calls_wait_at_most_max_wait() -> None:
    # Bounds are generous (a loaded CI machine); max_wait is far from both the
    # in-flight batch's duration and zero, so each bound still tells the cases apart.
    inner = Slow(seconds=1.2)
    scorer = BatchingScorer(inner, max_wait_ms=400)

    async def main() -> tuple[float, float, float]:
        t0 = time.perf_counter()
        first = asyncio.ensure_future(scorer.score(conv("a"), cands("x")))
        await asyncio.sleep(0.05)  # the first batch is in flight now
        t1 = time.perf_counter()
        later = [asyncio.ensure_future(scorer.score(conv(q), cands("y"))) for q in "bc"]
        await asyncio.gather(first, *later)
        assert await scorer.score(conv("q"), []) == []  # nothing to score: no batch
        return t0, t1, time.perf_counter()

    t0, t1, done = asyncio.run(main())
    (start_1, size_1), (start_2, size_2) = inner.batches
    # The lone first call went to the scorer at once, not after max_wait.
    assert start_1 - t0 < 0.25
    assert size_1 == 1
    # The later calls joined one batch, flushed after max_wait, without waiting for
    # the batch in flight (1.2 s) to finish.
    assert size_2 == 2
    assert 0.39 <= start_2 - t1 < 0.95
    assert done - t0 < 0.05 + 0.4 + 1.2 + 0.5


def test_one_failing_request_does_not_fail_the_others_in_its_batch() -> None:
    scorer = BatchingScorer(Counting(fail_on="bad"))

    async def main() -> list[object]:
        calls = [scorer.score(conv(t), cands("xy")) for t in ("ok", "bad", "fine")]
        return await asyncio.gather(*calls, return_exceptions=True)

    ok, bad, fine = asyncio.run(main())
    assert ok == [2.0] and fine == [2.0]
    assert isinstance(bad, ValueError)


class Plugin(Scorer):
    """A third-party async scorer that declares nothing about batching."""

    name = "plugin"

    def __init__(self) -> None:
        self.running = 0
        self.most_at_once = 0

    async def score(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        await asyncio.sleep(0.05)
        self.running -= 1
        if messages[-1].content == "bad":
            raise ValueError("bad request")
        return [float(len(messages[-1].content))] * len(candidates)


def test_a_plugin_scorer_is_batched_across_requests_through_the_contract_alone() -> None:
    inner = Plugin()
    sizes: list[int] = []
    scorer = BatchingScorer(inner, max_wait_ms=5, on_batch=lambda name, n: sizes.append(n))

    async def main() -> list[object]:
        calls = [scorer.score(conv(t), cands("a")) for t in ("one", "bad", "three", "four")]
        return await asyncio.gather(*calls, return_exceptions=True)

    one, bad, three, four = asyncio.run(main())
    # One batch of four requests, scored concurrently by the default score_batch; the
    # failing request gets its own error and the others their values.
    assert sizes == [4] and inner.most_at_once == 4
    assert (one, three, four) == ([3.0], [5.0], [4.0])
    assert isinstance(bad, ValueError)


def test_classifier_batches_every_request_in_one_call_with_the_same_values() -> None:
    clf = SafetyClassifier()
    items = [
        (conv("q1"), cands("Have a lovely day.", "You idiot, damn it.")),
        (conv("q2"), cands("Boil it for seven minutes.")),
    ]
    together = asyncio.run(clf.score_batch(items))
    alone = [clf.score_sync(m, c) for m, c in items]
    assert [v for row in together for v in row] == pytest.approx([v for row in alone for v in row])
    assert together[0][1] > 0.6 > together[0][0]


def test_other_sync_scorers_run_every_request_in_one_thread_hop() -> None:
    rules = RulesScorer()
    items = [(conv("a"), cands("A good clear answer here.")), (conv("b"), cands(""))]
    assert asyncio.run(rules.score_batch(items)) == [rules.score_sync(m, c) for m, c in items]


def test_embedding_batch_matches_per_request_scores(tmp_path: Path) -> None:
    from aligntime.scorers.embedding import EmbeddingOptions, EmbeddingRelevance
    from hf_tiny import build_bert

    items = [
        (conv("How do I boil an egg?"), cands("Boil it for seven minutes.", "Paris is nice.")),
        (conv("What is the capital of France?"), cands("Paris.")),
        (conv("Tell me a joke"), cands("Why did the chicken cross the road?", "No.", "Ha")),
    ]
    # A tiny randomly initialised BERT and a WordPiece tokenizer over these texts' words,
    # built here: the real loading and padding code, no model to download, nothing to skip.
    texts = [m[-1].content for m, _ in items] + [c.text for _, cs in items for c in cs]
    vocabulary = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    model_dir = build_bert(tmp_path / "tiny-bert", vocabulary, hidden=32)
    scorer = EmbeddingRelevance(EmbeddingOptions(model=str(model_dir), runtime="torch"))
    together = asyncio.run(scorer.score_batch(items))
    alone = [scorer.score_sync(m, c) for m, c in items]
    # Padding to the longest text of the batch must not change any score.
    assert [len(row) for row in together] == [2, 1, 3]
    for a, b in zip(together, alone, strict=True):
        assert a == pytest.approx(b, abs=1e-4)
    assert len({round(v, 4) for row in together for v in row}) > 1  # not a constant
