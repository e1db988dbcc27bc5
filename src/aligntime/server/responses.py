"""Outcome → the response models of :mod:`aligntime.server.protocol`, and their bytes.

The server sends what these models dump, so the OpenAPI schema describes
exactly what a client receives: the ``chat.completion`` object, or the stream
of ``chat.completion.chunk`` events that carries the same answer.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

from aligntime.server.errors import ApiError
from aligntime.server.outcome import Outcome
from aligntime.server.planning import Plan
from aligntime.server.protocol import (
    AligntimeResult,
    AssistantMessage,
    CandidateOut,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    Delta,
    FinishReason,
    InputDecisionOut,
    UsageOut,
)
from aligntime.server.text import json_bytes
from aligntime.types import Candidate


def new_id() -> str:
    """A fresh completion id, as OpenAI spells them."""
    return "chatcmpl-" + uuid.uuid4().hex


def candidates_out(outcome: Outcome, *, redact: bool) -> list[CandidateOut]:
    """Every candidate with its scores, the chosen one marked (sent on request, always
    audited); with ``redact``, the text of each that failed a gate is withheld."""
    result = outcome.result
    if result is None:
        return []
    return [
        candidate_out(c, result.best == i, redact=redact) for i, c in enumerate(result.candidates)
    ]


def candidate_out(candidate: Candidate, chosen: bool, *, redact: bool = True) -> CandidateOut:
    """One candidate as the server shows it: its record, less what the API does not carry.

    With ``redact`` (the default: only the audit right and the audit log see more), a
    candidate that failed a gate has ``text: null`` and ``redacted: true``; its scores stay.
    """
    out = CandidateOut.model_validate({**candidate.to_record(), "chosen": chosen})
    if redact and not out.passed:
        return out.model_copy(update={"text": None, "redacted": True})
    return out


def completion(plan: Plan, outcome: Outcome, rid: str, created: int) -> ChatCompletion:
    """The ``chat.completion`` object (the candidates in it when the request asked for them)."""
    text, finish = _answer(plan, outcome)
    usage = outcome.usage
    return ChatCompletion(
        id=rid,
        created=created,
        model=plan.served.policy.name,
        choices=[Choice(message=AssistantMessage(content=text), finish_reason=finish)],
        usage=UsageOut(
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            total_tokens=usage.prompt_tokens + usage.completion_tokens,
        ),
        aligntime=_extension(plan, outcome),
    )


def _answer(plan: Plan, outcome: Outcome) -> tuple[str, FinishReason]:
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


def _extension(plan: Plan, outcome: Outcome) -> AligntimeResult:
    result = outcome.result
    verdict = outcome.input
    return AligntimeResult(
        policy=plan.served.policy.name,
        strategy=result.strategy if result else plan.aligner.strategy.name,
        candidates_generated=outcome.candidates_generated,
        best=result.best if result else None,
        fallback=result is None or result.best is None,
        fail_closed=outcome.fail_closed,
        scorer_errors=outcome.scorer_errors,
        timings=result.timings.to_dict() if result else {},
        input=InputDecisionOut.model_validate(verdict.to_dict()) if verdict else None,
        candidates=(
            candidates_out(outcome, redact=not plan.reveal_failed)
            if plan.return_candidates
            else None
        ),
    )


# --- streaming ----------------------------------------------------------------------------

_WORDS = re.compile(r"\S+\s*|\s+")


def split_text(text: str, words: int = 8) -> list[str]:
    """The answer in pieces of a few words (whitespace kept), for streaming."""
    parts = _WORDS.findall(text)
    if not parts:
        return [text] if text else []
    return ["".join(parts[i : i + words]) for i in range(0, len(parts), words)]


def first_chunk(rid: str, created: int, model: str) -> bytes:
    """The event sent at once: the assistant's role, no text yet."""
    return event(_chunk(rid, created, model, Delta(role="assistant", content="")))


def answer_chunks(body: ChatCompletion, *, include_usage: bool) -> Iterator[bytes]:
    """The events that carry ``body``: the answer in pieces, a last chunk with the
    ``finish_reason`` and the extension, the usage when asked for, then ``[DONE]``."""
    rid, created, model = body.id, body.created, body.model
    choice = body.choices[0]
    for piece in split_text(choice.message.content):
        yield event(_chunk(rid, created, model, Delta(content=piece)))
    yield event(_chunk(rid, created, model, Delta(), choice.finish_reason, body.aligntime))
    if include_usage:
        yield event(
            ChatCompletionChunk(id=rid, created=created, model=model, choices=[], usage=body.usage)
        )
    yield b"data: [DONE]\n\n"


def error_events(exc: ApiError) -> bytes:
    """An error inside a stream: the OpenAI error object as an event, then ``[DONE]``."""
    return b"data: " + exc.json_bytes() + b"\n\ndata: [DONE]\n\n"


def event(chunk: ChatCompletionChunk) -> bytes:
    """One server-sent event."""
    return b"data: " + json_bytes(chunk.model_dump()) + b"\n\n"


def _chunk(
    rid: str,
    created: int,
    model: str,
    delta: Delta,
    finish: FinishReason | None = None,
    aligntime: AligntimeResult | None = None,
) -> ChatCompletionChunk:
    choice = ChunkChoice(delta=delta, finish_reason=finish)
    return ChatCompletionChunk(
        id=rid, created=created, model=model, choices=[choice], aligntime=aligntime
    )
