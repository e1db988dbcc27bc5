"""Dynamic batching of scorer calls across concurrent requests.

:class:`BatchingScorer` wraps a scorer. Calls that arrive while the loop is
busy are coalesced: the first call of an idle scorer is flushed on the next
turn of the event loop (so a lone request waits for nothing), and while a batch
is in flight, new calls wait at most ``max_wait_ms`` to join the next one.

How a coalesced batch is scored depends on the scorer:

- one that defines ``score_batch(requests)`` (a list of ``(messages,
  candidates)`` pairs → one list of values per request) is called once;
- the safety classifier, which ignores the conversation, classifies every
  request's candidates in one call;
- the embedding scorer embeds every request text and every candidate in one
  forward pass;
- other blocking scorers run every request in one worker-thread hop;
- other asynchronous scorers (the judge) run concurrently: the llama.cpp engine
  already decodes concurrent requests together in its parallel slots.

A scorer that reads the input gate's verdict (``reads_assessment``) gets it
through the wrapper and is not batched: the verdict differs per request. Nor is
one that labels its values (``reports_details``, a guard model): its
:meth:`~aligntime.scorers.base.Scorer.score_details` is called directly, so the
labels reach the gate failures. Requests (the input gate) are never batched.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aligntime.scorers.base import Scorer, SyncScorer, last_user_text, score_candidates
from aligntime.types import Candidate, Message, RequestAssessment, ScoreDetail

log = logging.getLogger(__name__)

Item = tuple[Sequence[Message], Sequence[Candidate]]


class BatchingScorer(Scorer):
    """A scorer that coalesces concurrent calls into batches; same name, range, direction."""

    def __init__(
        self,
        inner: Scorer,
        *,
        max_wait_ms: float = 2.0,
        max_batch: int = 256,
        on_batch: Callable[[str, int], None] | None = None,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.direction = inner.direction
        self.value_range = inner.value_range
        self.reads_assessment = inner.reads_assessment
        self.reports_details = inner.reports_details
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_batch = max_batch
        self._on_batch = on_batch
        self._pending: list[tuple[Item, asyncio.Future[list[float]]]] = []
        self._pending_candidates = 0
        self._timer: asyncio.Handle | None = None
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def load(self) -> None:
        self.inner.load()

    def close(self) -> None:
        self.inner.close()

    def normalise(self, value: float) -> float:
        return self.inner.normalise(value)

    async def score_details(
        self,
        messages: Sequence[Message],
        candidates: Sequence[Candidate],
        *,
        assessment: RequestAssessment | None = None,
    ) -> list[ScoreDetail]:
        if self.reports_details:
            # The batch paths below carry values only; the labels need the scorer's own call.
            return await self.inner.score_details(messages, candidates, assessment=assessment)
        return await super().score_details(messages, candidates, assessment=assessment)

    async def score_request(self, messages: Sequence[Message]) -> float:
        return await self.inner.score_request(messages)

    async def score_request_details(self, messages: Sequence[Message]) -> ScoreDetail:
        return await self.inner.score_request_details(messages)

    async def score(
        self,
        messages: Sequence[Message],
        candidates: Sequence[Candidate],
        assessment: RequestAssessment | None = None,
    ) -> list[float]:
        if not candidates:
            return []
        if self.reads_assessment:
            verdict = assessment or RequestAssessment()
            return await score_candidates(self.inner, messages, candidates, verdict)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[float]] = loop.create_future()
        self._pending.append(((messages, candidates), fut))
        self._pending_candidates += len(candidates)
        if self._pending_candidates >= self.max_batch:
            self._flush()
        elif self._timer is None:
            if self._inflight and self.max_wait_s > 0:
                self._timer = loop.call_later(self.max_wait_s, self._flush)
            else:
                self._timer = loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        self._pending_candidates = 0
        if not batch:
            return
        self._inflight += 1
        task = asyncio.ensure_future(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[Item, asyncio.Future[list[float]]]]) -> None:
        try:
            if self._on_batch is not None:
                self._on_batch(self.name, len(batch))
            try:
                results = await score_batch(self.inner, [item for item, _ in batch])
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                return
            for (_, fut), values in zip(batch, results, strict=True):
                if fut.done():  # the request gave up (time-out)
                    continue
                if isinstance(values, BaseException):
                    fut.set_exception(values)
                else:
                    fut.set_result(values)
        finally:
            self._inflight -= 1


async def score_batch(scorer: Scorer, items: list[Item]) -> list[Any]:
    """Score several requests' candidates at once; one list of values (or an error) each."""
    custom = getattr(scorer, "score_batch", None)
    if callable(custom):
        return list(await custom(items))
    if len(items) == 1:
        return [await scorer.score(*items[0])]
    kind = type(scorer).__name__
    if kind == "SafetyClassifier" and isinstance(scorer, SyncScorer):
        # The classifier reads the answers only, so every request's answers go in one call.
        flat = [c for _, cands in items for c in cands]
        values = await scorer.score(items[0][0], flat)
        return _split(values, items)
    if kind == "EmbeddingRelevance" and hasattr(scorer, "embed"):
        return await asyncio.to_thread(_embed_batch, scorer, items)
    if isinstance(scorer, SyncScorer):
        return await asyncio.to_thread(_each_sync, scorer, items)
    calls = (scorer.score(m, c) for m, c in items)
    return list(await asyncio.gather(*calls, return_exceptions=True))


def _split(values: Sequence[float], items: list[Item]) -> list[list[float]]:
    out, start = [], 0
    for _, cands in items:
        out.append([float(v) for v in values[start : start + len(cands)]])
        start += len(cands)
    return out


def _each_sync(scorer: SyncScorer, items: list[Item]) -> list[Any]:
    results: list[Any] = []
    for messages, cands in items:
        try:
            results.append(scorer.score_sync(messages, cands))
        except Exception as exc:  # one request's failure must not fail the others
            results.append(exc)
    return results


def _embed_batch(scorer: Any, items: list[Item]) -> list[list[float]]:
    """One forward pass over every request text and every candidate."""
    # The scorer's own request text (every user turn), so a batch scores as one call would.
    query = getattr(scorer, "query", None)
    requests = [query(m) if callable(query) else last_user_text(m) for m, _ in items]
    answers = [c.text or " " for _, cands in items for c in cands]
    vectors = scorer.embed(requests + answers)
    queries, answer_vectors = vectors[: len(requests)], vectors[len(requests) :]
    out, start = [], 0
    for i, (_, cands) in enumerate(items):
        block = answer_vectors[start : start + len(cands)]
        out.append([float(x) for x in (block @ queries[i]).tolist()])
        start += len(cands)
    return out
