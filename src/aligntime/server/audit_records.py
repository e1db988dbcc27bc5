"""What the audit log keeps of a request: its answer, or its error, as named rows."""

from __future__ import annotations

from aligntime.server.audit import AuditRecord, RequestRow
from aligntime.server.errors import ApiError
from aligntime.server.outcome import Outcome
from aligntime.server.planning import Plan
from aligntime.server.protocol import ChatCompletion, ChatCompletionRequest
from aligntime.server.responses import candidates_out


def answered(
    req: ChatCompletionRequest,
    key_id: str | None,
    plan: Plan,
    outcome: Outcome,
    body: ChatCompletion,
) -> AuditRecord:
    """The record of an answered request: what was sent, and every candidate."""
    ext = body.aligntime
    # The log keeps every candidate's text, whatever the caller was shown.
    candidates = candidates_out(outcome, redact=False)
    request = RequestRow(
        id=body.id,
        created=body.created,
        key_id=key_id,
        model=body.model,
        status=200,
        stream=req.stream,
        messages=[m.to_dict() for m in plan.request.messages],
        answer=body.choices[0].message.content,
        best=ext.best,
        fallback=ext.fallback,
        fail_closed=ext.fail_closed,
        strategy=ext.strategy,
        n=plan.request.n,
        prompt_tokens=outcome.usage.prompt_tokens,
        completion_tokens=outcome.usage.completion_tokens,
        timings=ext.timings,
        error=", ".join(ext.scorer_errors) or None,
        user=req.user,
    )
    decision = ext.input.model_dump() if ext.input is not None else None
    return AuditRecord(request, candidates, decision)


def failed(
    rid: str, created: int, req: ChatCompletionRequest, key_id: str | None, exc: ApiError
) -> AuditRecord:
    """The record of a request answered with an error: the conversation as sent, and why."""
    aborted = " (aborted)" if exc.code == "shutting_down" else ""
    request = RequestRow(
        id=rid,
        created=created,
        key_id=key_id,
        model=req.model,
        status=exc.status,
        stream=req.stream,
        messages=[{"role": m.role, "content": m.text()} for m in req.messages],
        error=f"{exc.code or exc.type}{aborted}: {exc.message}",
        user=req.user,
    )
    return AuditRecord(request)
