"""Request → Aligner calls → response: the server's logic, independent of HTTP.

One :class:`Aligner` per served policy is shared by every request; its
generator is metered per request (:mod:`aligntime.server.metering`) and its
scorers batched across requests (:mod:`aligntime.server.batching`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aligntime import registry
from aligntime.aligner import Aligner, build
from aligntime.errors import BackendError, ConfigError, InputError, ScorerError
from aligntime.policy.schema import Policy
from aligntime.server.audit import AuditLog, AuditRecord
from aligntime.server.batching import BatchingScorer
from aligntime.server.config import ServerOptions
from aligntime.server.errors import ApiError, backend_down, bad_request, timed_out
from aligntime.server.metering import MeteredGenerator, UsageMeter, current_meter
from aligntime.server.metrics import Metrics
from aligntime.server.protocol import ChatCompletionRequest
from aligntime.types import Message, Result, Usage

log = logging.getLogger(__name__)


@dataclass
class Served:
    """One policy the server answers for, under its name."""

    policy: Policy
    aligner: Aligner
    created: int
    gated: frozenset[str]
    """Scorers with a gate: when one of them fails, the request fails closed."""
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
        self.served: dict[str, Served] = {}
        created = int(time.time())
        for al in aligners:
            name = al.policy.name
            if name in self.served:
                raise ConfigError(
                    f"two served policies are both named {name!r}",
                    hint="give each policy file a distinct `name:`; clients pick one by it",
                )
            gated = frozenset(s.name for s in al.policy.scorers if s.gate is not None)
            self.served[name] = Served(al.policy, al, created, gated)

    # --- planning -----------------------------------------------------------------------

    def plan(self, req: ChatCompletionRequest) -> Plan:
        """Validate a request against the served policy and the server's limits (4xx)."""
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
            (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ()),
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
            served.policy, generator=base.generator, scorers=base.scorers, strategy=strategy
        )
        served.variants[kind] = variant
        return variant

    # --- running ------------------------------------------------------------------------

    async def run(self, plan: Plan, ctx: RequestContext) -> Outcome:
        """Align, mapping failures to API errors; fails closed when a gating scorer fails."""
        meter = UsageMeter()
        token = current_meter.set(meter)
        t0 = time.perf_counter()
        try:
            result = await asyncio.wait_for(
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
                self.options.timeout_s,
            )
        except TimeoutError:
            raise timed_out(self.options.timeout_s) from None
        except BackendError as exc:
            raise backend_down(
                f"the generator backend of model {plan.served.policy.name!r} is unavailable: {exc}"
            ) from exc
        except ScorerError as exc:
            self.metrics.scorer_errors.labels(plan.served.policy.name, exc.scorer).inc()
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
        fail_closed = result.best is None and bool(plan.served.gated.intersection(failed))
        if result.best is None:
            reason = "fail_closed" if fail_closed else "no_eligible_candidate"
            self.metrics.fallbacks.labels(result.policy, reason).inc()
        return Outcome(result, result.usage, len(result.candidates), failed, fail_closed)

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
        result = outcome.result
        if result is None or result.best is None:
            return plan.served.policy.fallback, "content_filter"
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

    async def complete(self, req: ChatCompletionRequest, ctx: RequestContext) -> dict[str, Any]:
        """Answer one non-streaming request; returns only after the audit rows are committed."""
        rid, created = new_id(), int(time.time())
        try:
            plan = self.plan(req)
            outcome = await self.run(plan, ctx)
        except ApiError as exc:
            await self._audit_error(rid, created, req, ctx, exc)
            raise
        body = self.response(plan, outcome, rid, created)
        await self._audit(rid, created, req, ctx, plan, outcome, body)
        return body

    async def stream(
        self, req: ChatCompletionRequest, plan: Plan, ctx: RequestContext
    ) -> AsyncIterator[bytes]:
        """Server-sent events: a role chunk at once, the aligned answer in pieces once
        chosen, a final chunk with ``finish_reason`` and the extension, then ``[DONE]``.

        Errors after the first chunk arrive as an OpenAI error event before ``[DONE]``.
        """
        rid, created = new_id(), int(time.time())
        base = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": plan.served.policy.name,
        }
        yield _event(base, {"role": "assistant", "content": ""}, None)
        try:
            outcome = await self.run(plan, ctx)
        except ApiError as exc:
            await self._audit_error(rid, created, req, ctx, exc)
            yield b"data: " + exc.json_bytes() + b"\n\ndata: [DONE]\n\n"
            return
        body = self.response(plan, outcome, rid, created)
        # Acknowledged only once audited: nothing of the answer goes out before the commit.
        try:
            await self._audit(rid, created, req, ctx, plan, outcome, body)
        except ApiError as exc:
            yield b"data: " + exc.json_bytes() + b"\n\ndata: [DONE]\n\n"
            return
        choice = body["choices"][0]
        for piece in split_text(choice["message"]["content"]):
            yield _event(base, {"content": piece}, None)
        final = {"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}
        last = {**base, "choices": [final], "aligntime": body["aligntime"]}
        yield b"data: " + json.dumps(last, ensure_ascii=False).encode() + b"\n\n"
        if req.stream_options and req.stream_options.include_usage:
            tail = {**base, "choices": [], "usage": body["usage"]}
            yield b"data: " + json.dumps(tail).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

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
    ) -> None:
        if self.audit is None:
            return
        try:
            await self.audit.write(self._record(rid, created, req, ctx, plan, outcome, body))
        except Exception as exc:
            # Unaudited answers are not acknowledged: the client gets an error, not the answer.
            log.error("audit log write failed: %s", type(exc).__name__)
            raise ApiError(
                503,
                "the audit log could not be written, so the answer is withheld",
                type="server_error",
                code="audit_unavailable",
            ) from exc

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
        return AuditRecord(row, cands)

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
        raw = json.dumps([{"role": m.role, "content": m.text()} for m in req.messages])
        row = (
            rid, created, ctx.key_id, req.model, exc.status, int(req.stream), raw, None, None,
            0, 0, None, None, 0, 0, None, f"{exc.code or exc.type}: {exc.message}", req.user,
        )  # fmt: skip
        try:
            await self.audit.write(AuditRecord(row))
        except Exception as err:  # the error answer matters more than its audit row
            log.error("audit of a failed request failed: %s", err)

    # --- lifecycle ----------------------------------------------------------------------

    def load(self) -> None:
        """Load every served policy's models now (before the first request)."""
        for served in self.served.values():
            served.aligner.load()

    def close(self) -> None:
        for served in self.served.values():
            served.aligner.close()
        if self.audit is not None:
            self.audit.close()


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
    return b"data: " + json.dumps(chunk, ensure_ascii=False).encode() + b"\n\n"


def _messages_json(messages: Sequence[Message]) -> str:
    return json.dumps([m.to_dict() for m in messages], ensure_ascii=False)
