"""Request → Aligner calls → response: the server's logic, independent of HTTP.

One :class:`Aligner` per served policy is shared by every request; its
generator is metered per request (:mod:`aligntime.server.metering`) and its
scorers batched across requests (:mod:`aligntime.server.batching`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aligntime import registry
from aligntime.aligner import Aligner, build
from aligntime.errors import (
    BackendError,
    ConfigError,
    ContextLengthError,
    InputError,
    ScorerError,
)
from aligntime.policy.schema import Policy
from aligntime.server.audit import AuditLog, AuditRecord, AuditUnavailable
from aligntime.server.batching import BatchingScorer
from aligntime.server.config import ServerOptions
from aligntime.server.errors import (
    ApiError,
    audit_unavailable,
    backend_down,
    bad_request,
    context_length_exceeded,
    internal_error,
    shutting_down,
    timed_out,
)
from aligntime.server.lifecycle import Aborted, Shutdown, within
from aligntime.server.metering import MeteredGenerator, UsageMeter, current_meter
from aligntime.server.metrics import Metrics
from aligntime.server.protocol import ChatCompletionRequest
from aligntime.server.text import find_lone_surrogate, json_bytes
from aligntime.types import Message, RequestAssessment, Result, Usage

log = logging.getLogger(__name__)

T = TypeVar("T")
AUDIT_FLOOR_S = 1.0
"""Least time the audit commit gets when the request's own time is nearly spent."""
PROBE_EVERY_S = 1.0
"""Least time between two audit health probes (``/healthz`` after a failed write)."""


@dataclass
class Served:
    """One policy the server answers for, under its name."""

    policy: Policy
    aligner: Aligner
    created: int
    gated: frozenset[str]
    """Scorers with a gate: when one of them fails, the request fails closed."""
    inputs: frozenset[str] = frozenset()
    """The input gate's scorers: when one of them fails, the request is refused."""
    variants: dict[str, Aligner] = field(default_factory=dict)
    """Per-request strategy overrides, sharing the generator and scorers."""


@dataclass
class Plan:
    """A validated request, ready for the Aligner."""

    served: Served
    aligner: Aligner
    messages: list[Message]
    n: int
    max_tokens: int | None
    temperature: float | None
    seed: int | None
    template: str | None
    return_candidates: bool
    top_p: float | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Outcome:
    """What the Aligner produced for one request (``result`` is None when it failed closed)."""

    result: Result | None
    usage: Usage
    candidates_generated: int
    scorer_errors: list[str]
    fail_closed: bool
    input: RequestAssessment | None = None
    """The input gate's verdict (``None`` for a policy without a gate, or when the
    request failed closed before the gate gave one)."""


@dataclass
class RequestContext:
    """Who asked, and where the time went (filled in while the request runs)."""

    key_id: str | None = None
    align_s: float | None = None
    streamed: bool = False


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
        created = int(time.time())
        for al in aligners:
            name = al.policy.name
            if name in self.served:
                raise ConfigError(
                    f"two served policies are both named {name!r}",
                    hint="give each policy file a distinct `name:`; clients pick one by it",
                )
            gated = frozenset(s.name for s in al.policy.scorers if s.gate is not None)
            inputs = frozenset(r.name for r in al.gate.rules) if al.gate else frozenset()
            self.served[name] = Served(al.policy, al, created, gated, inputs)

    # --- planning -----------------------------------------------------------------------

    def plan(self, req: ChatCompletionRequest) -> Plan:
        """Validate a request against the served policy and the server's limits (4xx)."""
        _check_text(req)
        stop = _stop_strings(req.stop)
        served = self.served.get(req.model)
        if served is None:
            raise ApiError(
                404,
                f"the model {req.model!r} does not exist; this server serves: "
                + ", ".join(sorted(self.served)),
                param="model",
                code="model_not_found",
            )
        if req.tools:
            raise bad_request("tools are not supported by aligntime", param="tools")
        if req.logprobs:
            raise bad_request("logprobs are not supported by aligntime", param="logprobs")
        if req.continue_final_message:
            raise bad_request(
                "continue_final_message is not supported by aligntime: it aligns whole answers",
                param="continue_final_message",
            )
        ext = req.aligntime
        policy = served.policy
        messages = [
            Message("system" if m.role == "developer" else m.role, m.text()) for m in req.messages
        ]
        if not any(m.role == "user" and m.content.strip() for m in messages):
            raise bad_request("the conversation has no non-empty user message", param="messages")
        n = (ext.n if ext and ext.n is not None else req.n) or policy.n
        limit = min(policy.max_n, self.options.max_n)
        if n > limit:
            raise bad_request(
                f"n must be at most {limit} for model {policy.name!r}, got {n}",
                param="aligntime.n" if ext and ext.n is not None else "n",
            )
        given = [t for t in (req.max_tokens, req.max_completion_tokens) if t is not None]
        max_tokens = min(given) if given else None
        if max_tokens is not None and max_tokens > self.options.max_tokens:
            raise bad_request(
                f"max_tokens must be at most {self.options.max_tokens}, got {max_tokens}",
                param="max_tokens",
            )
        template = ext.template if ext else None
        if template is not None and template not in policy.prompt.templates:
            names = ", ".join(sorted(policy.prompt.templates)) or "none"
            raise bad_request(
                f"unknown template {template!r} for model {policy.name!r}; templates: {names}",
                param="aligntime.template",
            )
        aligner = served.aligner
        if ext and ext.strategy and ext.strategy != policy.strategy.kind:
            aligner = self._variant(served, ext.strategy)
        return Plan(
            served,
            aligner,
            messages,
            n,
            max_tokens,
            req.temperature,
            req.seed,
            template,
            bool(ext and ext.return_candidates),
            req.top_p,
            stop,
        )

    def _variant(self, served: Served, kind: str) -> Aligner:
        """The served Aligner with another strategy (default options), built once."""
        found = served.variants.get(kind)
        if found is not None:
            return found
        try:
            strategy = build("strategy", kind, {})
        except Exception as exc:  # unknown name, or a strategy that needs options
            choices = registry.suggest(kind, list(registry.available("strategy")))
            reason = exc.message if isinstance(exc, ConfigError) else "it needs options"
            raise bad_request(
                f"unknown or unusable strategy {kind!r}: {reason}; {choices}",
                param="aligntime.strategy",
            ) from exc
        base = served.aligner
        variant = Aligner(
            served.policy,
            generator=base.generator,
            scorers=base.scorers,
            strategy=strategy,
            # The loaded input scorers too: a variant must not load their models again.
            input_scorers=base.gate.scorers if base.gate else None,
        )
        served.variants[kind] = variant
        return variant

    # --- running ------------------------------------------------------------------------

    async def run(self, plan: Plan, ctx: RequestContext, deadline: float) -> Outcome:
        """Align, mapping failures to API errors; fails closed when a gating scorer fails.

        ``deadline`` (event-loop time) ends the wait with a 504; the end of the
        shutdown grace period ends it with a 503.
        """
        meter = UsageMeter()
        token = current_meter.set(meter)
        t0 = time.perf_counter()
        try:
            result = await self._within(
                plan.aligner.aalign(
                    plan.messages,
                    plan.n,
                    template=plan.template,
                    max_tokens=plan.max_tokens,
                    temperature=plan.temperature,
                    seed=plan.seed,
                    top_p=plan.top_p,
                    stop=plan.stop,
                ),
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
                f"the generator backend of model {plan.served.policy.name!r} is unavailable: {exc}"
            ) from exc
        except ScorerError as exc:
            self.metrics.scorer_errors.labels(plan.served.policy.name, exc.scorer).inc()
            if exc.scorer in plan.served.inputs and exc.scorer not in plan.served.gated:
                return self._input_failed(plan, exc, meter)
            if plan.served.gated:
                # A broken check must not wave an answer through: the fallback, flagged.
                log.warning("scorer %s failed; failing closed: %s", exc.scorer, exc.message)
                self.metrics.fallbacks.labels(plan.served.policy.name, "fail_closed").inc()
                return Outcome(None, meter.usage, meter.candidates, [exc.scorer], True)
            raise ApiError(
                503,
                f"scoring failed for model {plan.served.policy.name!r}: {exc}",
                type="server_error",
                code="scorer_unavailable",
            ) from exc
        except (InputError, ConfigError) as exc:
            raise bad_request(str(exc)) from exc
        finally:
            current_meter.reset(token)
            ctx.align_s = time.perf_counter() - t0
        self.metrics.observe_result(result)
        failed = sorted(
            {name for c in result.candidates for name, v in c.scores.items() if math.isnan(v)}
        )
        for name in failed:
            self.metrics.scorer_errors.labels(result.policy, name).inc()
        verdict = result.input
        if verdict is not None and verdict.failed:  # degraded input scorers: refused
            for name in verdict.failed:
                self.metrics.scorer_errors.labels(result.policy, name).inc()
            failed = sorted({*failed, *verdict.failed})
        if result.refused:
            fail_closed = verdict is not None and bool(verdict.failed)
            reason = "fail_closed" if fail_closed else "input_refused"
        else:
            fail_closed = result.best is None and bool(plan.served.gated.intersection(failed))
            reason = "fail_closed" if fail_closed else "no_eligible_candidate"
        if result.best is None:
            self.metrics.fallbacks.labels(result.policy, reason).inc()
        return Outcome(result, result.usage, len(result.candidates), failed, fail_closed, verdict)

    def _input_failed(self, plan: Plan, exc: ScorerError, meter: UsageMeter) -> Outcome:
        """An input scorer raised (``on_scorer_error: raise``): the gate cannot say the
        request is safe, so it is refused, as a degraded gate refuses (fail closed)."""
        policy = plan.served.policy.name
        log.warning("input scorer %s failed; refusing (fail closed): %s", exc.scorer, exc.message)
        verdict = RequestAssessment("refuse", {exc.scorer: math.nan}, exc.scorer, None,
                                    (exc.scorer,))  # fmt: skip
        self.metrics.input_actions.labels(policy, "refuse").inc()
        self.metrics.fallbacks.labels(policy, "fail_closed").inc()
        return Outcome(None, meter.usage, meter.candidates, [exc.scorer], True, verdict)

    # --- responses ----------------------------------------------------------------------

    def response(self, plan: Plan, outcome: Outcome, rid: str, created: int) -> dict[str, Any]:
        """The ``chat.completion`` object (as a dict ready for JSON)."""
        text, finish = self._answer(plan, outcome)
        usage = outcome.usage
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": plan.served.policy.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            },
            "system_fingerprint": None,
            "aligntime": self._extension(plan, outcome),
        }

    @staticmethod
    def _answer(plan: Plan, outcome: Outcome) -> tuple[str, str]:
        """The text and ``finish_reason``: OpenAI's ``content_filter`` for any text that
        stands in for a candidate (the fallback, or the input gate's refusal)."""
        result = outcome.result
        policy = plan.served.policy
        if result is None:
            refusal = policy.input.refusal if outcome.input and policy.input else None
            return refusal or policy.fallback, "content_filter"
        if result.best is None:
            return result.fallback or policy.fallback, "content_filter"
        chosen = result.candidates[result.best]
        return chosen.text, "length" if chosen.finish_reason == "length" else "stop"

    @staticmethod
    def _extension(plan: Plan, outcome: Outcome) -> dict[str, Any]:
        result = outcome.result
        ext: dict[str, Any] = {
            "policy": plan.served.policy.name,
            "strategy": result.strategy if result else plan.aligner.strategy.name,
            "candidates_generated": outcome.candidates_generated,
            "best": result.best if result else None,
            "fallback": result is None or result.best is None,
            "fail_closed": outcome.fail_closed,
            "scorer_errors": outcome.scorer_errors,
            "timings": result.timings.to_dict() if result else {},
            "input": outcome.input.to_dict() if outcome.input is not None else None,
        }
        if plan.return_candidates:
            ext["candidates"] = [
                {
                    "text": c.text,
                    "score": c.score,
                    "scores": {k: (None if math.isnan(v) else v) for k, v in c.scores.items()},
                    "passed": c.passed,
                    "gate_failures": list(c.gate_failures),
                    "tokens": c.tokens,
                    "finish_reason": c.finish_reason,
                    "chosen": result is not None and result.best == i,
                }
                for i, c in enumerate(result.candidates if result else [])
            ]
        return ext

    def deadline(self) -> float:
        """When a request that starts now must be answered (event-loop time)."""
        return asyncio.get_running_loop().time() + self.options.timeout_s

    async def complete(self, req: ChatCompletionRequest, ctx: RequestContext) -> dict[str, Any]:
        """Answer one non-streaming request; returns only after the audit rows are committed."""
        rid, created, deadline = new_id(), int(time.time()), self.deadline()
        try:
            plan = self.plan(req)
            outcome = await self.run(plan, ctx, deadline)
        except ApiError as exc:
            await self._audit_error(rid, created, req, ctx, exc)
            raise
        except Exception:
            await self._audit_error(rid, created, req, ctx, internal_error())
            raise  # a bug: the app logs it and answers 500
        body = self.response(plan, outcome, rid, created)
        await self._audit(rid, created, req, ctx, plan, outcome, body, deadline)
        return body

    async def stream(
        self, req: ChatCompletionRequest, plan: Plan, ctx: RequestContext
    ) -> AsyncIterator[bytes]:
        """Server-sent events: a role chunk at once, the aligned answer in pieces once
        chosen, a final chunk with ``finish_reason`` and the extension, then ``[DONE]``.

        Errors after the first chunk, a bug's included, arrive as an OpenAI error
        event before ``[DONE]``: a stream always ends properly.
        """
        rid, created, deadline = new_id(), int(time.time()), self.deadline()
        base = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": plan.served.policy.name,
        }
        yield _event(base, {"role": "assistant", "content": ""}, None)
        try:
            outcome = await self.run(plan, ctx, deadline)
            body = self.response(plan, outcome, rid, created)
        except ApiError as exc:
            await self._audit_error(rid, created, req, ctx, exc)
            yield _error_event(exc)
            return
        except Exception:
            log.exception("unexpected error while streaming %s", rid)
            await self._audit_error(rid, created, req, ctx, internal_error())
            yield _error_event(internal_error())
            return
        # Acknowledged only once audited: nothing of the answer goes out before the commit.
        try:
            await self._audit(rid, created, req, ctx, plan, outcome, body, deadline)
        except ApiError as exc:
            yield _error_event(exc)
            return
        choice = body["choices"][0]
        for piece in split_text(choice["message"]["content"]):
            yield _event(base, {"content": piece}, None)
        final = {"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}
        last = {**base, "choices": [final], "aligntime": body["aligntime"]}
        yield b"data: " + json_bytes(last) + b"\n\n"
        if req.stream_options and req.stream_options.include_usage:
            tail = {**base, "choices": [], "usage": body["usage"]}
            yield b"data: " + json_bytes(tail) + b"\n\n"
        yield b"data: [DONE]\n\n"

    async def _within(self, aw: Awaitable[T], deadline: float, *, abortable: bool) -> T:
        """``aw``'s result by ``deadline``; when ``abortable``, also by the shutdown's end."""
        return await within(aw, deadline, self.shutdown if abortable else None)

    # --- audit --------------------------------------------------------------------------

    async def _audit(
        self,
        rid: str,
        created: int,
        req: ChatCompletionRequest,
        ctx: RequestContext,
        plan: Plan,
        outcome: Outcome,
        body: dict[str, Any],
        deadline: float,
    ) -> None:
        """Commit the request's rows; a 503 (the answer withheld) when that fails."""
        if self.audit is None:
            return
        record = self._record(rid, created, req, ctx, plan, outcome, body)
        try:
            await self._within(self.audit.write(record), self._audit_deadline(deadline),
                               abortable=False)  # fmt: skip
        except TimeoutError:
            reason = f"no commit within the {self.options.timeout_s:g} s time-out"
            log.error("audit log write timed out for %s", rid)
            raise audit_unavailable(reason) from None
        except AuditUnavailable as exc:
            # Unaudited answers are not acknowledged: the client gets an error, not the answer.
            raise audit_unavailable(exc.reason) from exc

    def _audit_deadline(self, deadline: float) -> float:
        # What remains of the request's time, but never nothing: a commit takes milliseconds.
        floor = asyncio.get_running_loop().time() + min(AUDIT_FLOOR_S, self.options.timeout_s)
        return max(deadline, floor)

    def _record(
        self,
        rid: str,
        created: int,
        req: ChatCompletionRequest,
        ctx: RequestContext,
        plan: Plan,
        outcome: Outcome,
        body: dict[str, Any],
    ) -> AuditRecord:
        result = outcome.result
        ext = body["aligntime"]
        usage = outcome.usage
        row = (
            rid, created, ctx.key_id, plan.served.policy.name, 200, int(req.stream),
            _messages_json(plan.messages), body["choices"][0]["message"]["content"],
            ext["best"], int(ext["fallback"]), int(outcome.fail_closed), ext["strategy"],
            plan.n, usage.prompt_tokens, usage.completion_tokens, json.dumps(ext["timings"]),
            ", ".join(outcome.scorer_errors) or None, req.user,
        )  # fmt: skip
        cands = []
        for i, c in enumerate(result.candidates if result else []):
            scores = {k: (None if math.isnan(v) else v) for k, v in c.scores.items()}
            chosen = int(result is not None and result.best == i)
            failures = json.dumps(list(c.gate_failures))
            cand = (rid, i, c.text, c.score, json.dumps(scores), int(c.passed), failures)
            cands.append((*cand, c.tokens, c.finish_reason, chosen))
        return AuditRecord(row, cands, ext["input"])

    async def _audit_error(
        self,
        rid: str,
        created: int,
        req: ChatCompletionRequest,
        ctx: RequestContext,
        exc: ApiError,
    ) -> None:
        if self.audit is None:
            return
        raw = json.dumps(
            [{"role": m.role, "content": m.text()} for m in req.messages], ensure_ascii=False
        )
        aborted = " (aborted)" if exc.code == "shutting_down" else ""
        row = (
            rid, created, ctx.key_id, req.model, exc.status, int(req.stream), raw, None, None,
            0, 0, None, None, 0, 0, None, f"{exc.code or exc.type}{aborted}: {exc.message}",
            req.user,
        )  # fmt: skip
        try:
            await self._within(self.audit.write(AuditRecord(row)),
                               self._audit_deadline(self.deadline()), abortable=False)  # fmt: skip
        except (TimeoutError, AuditUnavailable) as err:
            # The error answer matters more than its audit row; the writer has logged
            # the failure itself (once, not once per request of an outage).
            log.debug("audit of a failed request failed: %s", err or "time-out")

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


def _check_text(req: ChatCompletionRequest) -> None:
    """Refuse text that no encoder takes further (a lone surrogate) with a 400 naming it."""
    hit = find_lone_surrogate(req.model_dump(exclude_none=True))
    if hit is not None:
        where, index, char = hit
        raise bad_request(
            f"{where or 'the request'}: the text holds a lone UTF-16 surrogate "
            f"(U+{ord(char):04X}) at character {index}; send valid Unicode",
            param=where or None,
            code="invalid_value",
        )


def _stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    """``stop`` as a tuple (the protocol model has checked count and emptiness)."""
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


_WORDS = re.compile(r"\S+\s*|\s+")


def split_text(text: str, words: int = 8) -> list[str]:
    """The answer in pieces of a few words (whitespace kept), for streaming."""
    parts = _WORDS.findall(text)
    if not parts:
        return [text] if text else []
    return ["".join(parts[i : i + words]) for i in range(0, len(parts), words)]


def new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex


def _event(base: dict[str, Any], delta: dict[str, str], finish: str | None) -> bytes:
    chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json_bytes(chunk) + b"\n\n"


def _error_event(exc: ApiError) -> bytes:
    return b"data: " + exc.json_bytes() + b"\n\ndata: [DONE]\n\n"


def _messages_json(messages: Sequence[Message]) -> str:
    return json.dumps([m.to_dict() for m in messages], ensure_ascii=False)
