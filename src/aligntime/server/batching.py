"""Dynamic batching of scorer calls across concurrent requests.

:class:`BatchingScorer` wraps a scorer. Calls that arrive while the loop is
busy are coalesced: the first call of an idle scorer is flushed on the next
turn of the event loop (so a lone request waits for nothing), and while a batch
is in flight, new calls wait at most ``max_wait_ms`` to join the next one.

A coalesced batch goes to the scorer's own
:meth:`~aligntime.scorers.base.Scorer.score_batch`, the contract every scorer
(plugins included) has: the default runs the requests concurrently (blocking
scorers in one worker-thread hop), and scorers with a joint pass (the safety
classifier, the embedding scorer) score the whole batch in one model call.

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

from aligntime.scorers.base import (
    BatchItem,
    Candidates,
    MaybeAssessment,
    Messages,
    Scorer,
    score_candidates,
)
from aligntime.types import Message, RequestAssessment, ScoreDetail

log = logging.getLogger(__name__)


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
        self.rates_alone = inner.rates_alone
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_batch = max_batch
        self._on_batch = on_batch
        self._pending: list[tuple[BatchItem, asyncio.Future[list[float]]]] = []
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
        self, messages: Messages, candidates: Candidates, *, assessment: MaybeAssessment = None
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
        self, messages: Messages, candidates: Candidates, assessment: MaybeAssessment = None
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

    async def _run(self, batch: list[tuple[BatchItem, asyncio.Future[list[float]]]]) -> None:
        try:
            if self._on_batch is not None:
                self._on_batch(self.name, len(batch))
            try:
                results = await self.inner.score_batch([item for item, _ in batch])
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
