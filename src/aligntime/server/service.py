"""Request → Aligner calls → response: the server's orchestration, independent of HTTP.

One :class:`Aligner` per served policy is shared by every request; its
generator is metered per request (:mod:`aligntime.server.metering`) and its
scorers batched across requests (:mod:`aligntime.server.batching`). The steps
live in modules of their own: checking a request (:mod:`~aligntime.server.planning`),
what the alignment came to (:mod:`~aligntime.server.outcome`), the response
(:mod:`~aligntime.server.responses`) and its audit record
(:mod:`~aligntime.server.audit_records`); this module runs them in order,
within the request's time, and answers only once the audit log has the record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from aligntime.aligner import Aligner, build
from aligntime.errors import (
    BackendError,
    ConfigError,
    ContextLengthError,
    InputError,
    ScorerError,
)
from aligntime.policy.schema import Policy
from aligntime.server import audit_records, early_stream, planning
from aligntime.server.audit import AuditLog, AuditRecord, AuditUnavailable
from aligntime.server.batching import BatchingScorer
from aligntime.server.config import Right, ServerOptions
from aligntime.server.errors import (
    ApiError,
    audit_unavailable,
    backend_down,
    bad_request,
    client_closed,
    context_length_exceeded,
    internal_error,
    scorer_unavailable,
    shutting_down,
    timed_out,
)
from aligntime.server.lifecycle import Aborted, Shutdown, within
from aligntime.server.metering import MeteredGenerator, UsageMeter, current_meter
from aligntime.server.metrics import Metrics
from aligntime.server.outcome import Outcome, scorer_failed, settled
from aligntime.server.planning import Plan, Served
from aligntime.server.protocol import ChatCompletion, ChatCompletionRequest
from aligntime.server.responses import (
    answer_chunks,
    completion,
    error_events,
    first_chunk,
    keepalive,
    new_id,
)
from aligntime.types import Result

log = logging.getLogger(__name__)

T = TypeVar("T")
AUDIT_FLOOR_S = 1.0
"""Least time the audit commit gets when the request's own time is nearly spent."""
PROBE_EVERY_S = 1.0
"""Least time between two audit health probes (``/healthz`` after a failed write)."""


@dataclass
class RequestContext:
    """Who asked, and where the time went (filled in while the request runs)."""

    key_id: str | None = None
    align_s: float | None = None
    streamed: bool = False
    rights: frozenset[Right] = frozenset()
    """What the caller's key may do besides asking (see :mod:`aligntime.server.config`)."""
    request_id: str | None = None
    """The id the ``x-request-id`` header carries: the completion's and its audit row's."""


@dataclass(frozen=True)
class _Call:
    """One chat completion being answered: the request, its id and its time."""

    req: ChatCompletionRequest
    ctx: RequestContext
    rid: str
    created: int
    deadline: float
    """When it must be answered (event-loop time)."""


def build_aligner(policy: Policy, options: ServerOptions, metrics: Metrics) -> Aligner:
    """An Aligner whose generator is metered and whose scorers batch across requests."""
    generator = MeteredGenerator(
        build("generator", policy.generator.backend, policy.generator.options())
    )
    scorers = [
        BatchingScorer(
            build("scorer", s.kind, s.options(), name=s.name),
            max_wait_ms=options.batch_wait_ms,
            on_batch=lambda name, size: metrics.batch_size.labels(name).observe(size),
        )
        for s in policy.scorers
    ]
    return Aligner(policy, generator=generator, scorers=scorers)


class AlignmentService:
    """Answers chat completions with aligned answers from the served policies."""

    def __init__(
        self,
        aligners: Sequence[Aligner],
        options: ServerOptions,
        metrics: Metrics,
        audit: AuditLog | None = None,
    ) -> None:
        self.options = options
        self.metrics = metrics
        self.audit = audit
        self.shutdown = Shutdown(options.shutdown_timeout_s)
        self.served: dict[str, Served] = {}
        self._last_probe = 0.0
        self._closed = False
        self._background: set[asyncio.Task[None]] = set()
        """Audit writes of abandoned requests, held until done."""
        created = int(time.time())
        for al in aligners:
            name = al.policy.name
            if name in self.served:
                raise ConfigError(
                    f"two served policies are both named {name!r}",
                    hint="give each policy file a distinct `name:`; clients pick one by it",
                )
            self.served[name] = Served.of(al, created)

    def plan(self, req: ChatCompletionRequest, ctx: RequestContext | None = None) -> Plan:
        """Validate a request against the served policy, the server's limits and the
        rights of the caller in ``ctx`` (none without it) (4xx)."""
        rights = ctx.rights if ctx is not None else frozenset()
        return planning.plan(req, self.served, self.options, rights)

    async def run(
        self,
        plan: Plan,
        ctx: RequestContext,
        deadline: float,
        work: Awaitable[Result] | None = None,
    ) -> Outcome:
        """Align, mapping failures to API errors; fails closed when a gating scorer fails.

        ``deadline`` (event-loop time) ends the wait with a 504; the end of the
        shutdown grace period ends it with a 503. ``work`` replaces the aligner's
        whole-answer alignment (stream-while-selecting's selection).
        """
        meter = UsageMeter()
        token = current_meter.set(meter)
        t0 = time.perf_counter()
        name = plan.served.policy.name
        try:
            result = await self._within(
                work or plan.aligner.aalign_request(plan.request),
                deadline,
                abortable=True,
            )
        except TimeoutError:
            raise timed_out(self.options.timeout_s) from None
        except Aborted:
            raise shutting_down(self.shutdown.grace_s) from None
        except ContextLengthError as exc:
            raise context_length_exceeded(exc) from exc
        except BackendError as exc:
            raise backend_down(
                f"the generator backend of model {name!r} is unavailable: {exc}"
            ) from exc
        except ScorerError as exc:
            failed = scorer_failed(plan, exc, meter.usage, meter.candidates, self.metrics)
            if failed is None:
                raise scorer_unavailable(f"scoring failed for model {name!r}: {exc}") from exc
            return failed
        except (InputError, ConfigError) as exc:
            raise bad_request(str(exc)) from exc
        finally:
            current_meter.reset(token)
            ctx.align_s = time.perf_counter() - t0
        return settled(plan, result, self.metrics)

    def deadline(self) -> float:
        """When a request that starts now must be answered (event-loop time)."""
        return asyncio.get_running_loop().time() + self.options.timeout_s

    def _call(self, req: ChatCompletionRequest, ctx: RequestContext) -> _Call:
        rid = ctx.request_id or new_id()
        return _Call(req, ctx, rid, int(time.time()), self.deadline())

    async def complete(self, req: ChatCompletionRequest, ctx: RequestContext) -> ChatCompletion:
        """Answer one non-streaming request; returns only after the audit rows are committed."""
        call = self._call(req, ctx)
        try:
            plan = self.plan(req, ctx)
            outcome = await self.run(plan, ctx, call.deadline)
        except ApiError as exc:
            await self._audit_error(call, exc)
            raise
        except asyncio.CancelledError:  # the client left (routes.py cancels the work)
            self._abandoned(call)
            raise
        except Exception:
            await self._audit_error(call, internal_error())
            raise  # a bug: the app logs it and answers 500
        body = completion(plan, outcome, call.rid, call.created)
        await self._audit(call, plan, outcome, body)
        return body

    async def stream(
        self, req: ChatCompletionRequest, plan: Plan, ctx: RequestContext
    ) -> AsyncIterator[bytes]:
        """Server-sent events: a role chunk at once, the aligned answer in pieces once
        chosen, a final chunk with ``finish_reason`` and the extension, then ``[DONE]``.

        Errors after the first chunk, a bug's included, arrive as an OpenAI error
        event before ``[DONE]``: a stream always ends properly.
        """
        call = self._call(req, ctx)
        work: asyncio.Future[Outcome] | None = None
        yield first_chunk(call.rid, call.created, plan.served.policy.name)
        try:
            if req.aligntime is not None and req.aligntime.stream_mode == "early":
                async for data in early_stream.events(self, call, plan):
                    yield data
                return
            # Comment lines while the answer is chosen, so idle time-outs keep the stream.
            work = asyncio.ensure_future(self.run(plan, ctx, call.deadline))
            async for ping in keepalive(work, self.options.keepalive_s):
                yield ping
            outcome = work.result()
            body = completion(plan, outcome, call.rid, call.created)
        except ApiError as exc:
            await self._audit_error(call, exc)
            yield error_events(exc)
            return
        except (asyncio.CancelledError, GeneratorExit):
            # The client left: Starlette cancels the stream, or closes it at a yield.
            if work is not None:
                work.cancel()
            self._abandoned(call)
            raise
        except Exception:
            log.exception("unexpected error while streaming %s", call.rid)
            await self._audit_error(call, internal_error())
            yield error_events(internal_error())
            return
        # Acknowledged only once audited: nothing of the answer goes out before the commit.
        try:
            await self._audit(call, plan, outcome, body)
        except ApiError as exc:
            yield error_events(exc)
            return
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        for chunk in answer_chunks(body, include_usage=include_usage):
            yield chunk

    async def _within(self, aw: Awaitable[T], deadline: float, *, abortable: bool) -> T:
        """``aw``'s result by ``deadline``; when ``abortable``, also by the shutdown's end."""
        return await within(aw, deadline, self.shutdown if abortable else None)

    # --- audit --------------------------------------------------------------------------

    async def _audit(self, call: _Call, plan: Plan, outcome: Outcome, body: ChatCompletion) -> None:
        """Commit the request's rows; a 503 (the answer withheld) when that fails."""
        if self.audit is None:
            return
        record = audit_records.answered(call.req, call.ctx.key_id, plan, outcome, body)
        try:
            await self._write(record, call.deadline)
        except TimeoutError:
            log.error("audit log write timed out for %s", call.rid)
            reason = f"no commit within the {self.options.timeout_s:g} s time-out"
            raise audit_unavailable(reason) from None
        except AuditUnavailable as exc:
            # Unaudited answers are not acknowledged: the client gets an error, not the answer.
            raise audit_unavailable(exc.reason) from exc

    def _abandoned(self, call: _Call) -> None:
        """Record that the client left (status 499), without waiting: the caller is
        being cancelled, and the write must outlive it."""
        if self.audit is None:
            return
        task = asyncio.get_running_loop().create_task(self._audit_error(call, client_closed()))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _audit_error(self, call: _Call, exc: ApiError) -> None:
        if self.audit is None:
            return
        record = audit_records.failed(call.rid, call.created, call.req, call.ctx.key_id, exc)
        try:
            await self._write(record, self.deadline())
        except (TimeoutError, AuditUnavailable) as err:
            # The error answer matters more than its audit row; the writer has logged
            # the failure itself (once, not once per request of an outage).
            log.debug("audit of a failed request failed: %s", err or "time-out")

    async def _write(self, record: AuditRecord, deadline: float) -> None:
        assert self.audit is not None
        # What remains of the request's time, but never nothing: a commit takes milliseconds.
        floor = asyncio.get_running_loop().time() + min(AUDIT_FLOOR_S, self.options.timeout_s)
        await self._within(self.audit.write(record), max(deadline, floor), abortable=False)

    # --- lifecycle ----------------------------------------------------------------------

    async def health(self) -> str | None:
        """Why the server cannot answer now (draining, the audit log failing); None: healthy.

        After an audit failure a small write is tried (at most once a second),
        so the state clears as soon as the log takes writes again, even while
        a load balancer keeps traffic away.
        """
        if self.shutdown.draining:
            return "the server is shutting down"
        if self.audit is None or self.audit.problem is None:
            return None
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_probe >= PROBE_EVERY_S:
            self._last_probe = loop.time()
            with contextlib.suppress(TimeoutError):  # still failing: the state says so
                await asyncio.wait_for(self.audit.probe(), timeout=2.0)
        problem = self.audit.problem
        return f"audit log: {problem}" if problem else None

    def load(self) -> None:
        """Load every served policy's models now (before the first request)."""
        for served in self.served.values():
            served.aligner.load()

    def close(self) -> None:
        """Release the models and close the audit log (again: nothing)."""
        if self._closed:
            return
        self._closed = True
        for served in self.served.values():
            served.aligner.close()
        if self.audit is not None:
            self.audit.close()
