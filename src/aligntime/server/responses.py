"""Outcome → the response models of :mod:`aligntime.server.protocol`, and their bytes.

The server sends what these models dump, so the OpenAPI schema describes
exactly what a client receives: the ``chat.completion`` object, or the stream
of ``chat.completion.chunk`` events that carries the same answer.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

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
    DeltaToolCall,
    FinishReason,
    FunctionCall,
    InputDecisionOut,
    ToolCallOut,
    UsageOut,
)
from aligntime.server.text import json_bytes
from aligntime.types import Candidate, ToolCall, rank_key


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
        return out.model_copy(update={"text": None, "tool_calls": None, "redacted": True})
    return out


def completion(plan: Plan, outcome: Outcome, rid: str, created: int) -> ChatCompletion:
    """The ``chat.completion`` object (the candidates in it when the request asked for them)."""
    text, finish = _answer(plan, outcome)
    usage = outcome.usage
    chosen = outcome.result.chosen if outcome.result is not None else None
    calls = chosen.tool_calls if chosen is not None else ()
    choices = [Choice(message=_message(text, calls), finish_reason=finish)]
    for extra in _runners_up(plan, outcome, text):
        choices.append(
            Choice(
                index=len(choices),
                message=_message(extra.text, extra.tool_calls),
                finish_reason=_finish(extra),
            )
        )
    return ChatCompletion(
        id=rid,
        created=created,
        model=plan.served.policy.name,
        choices=choices,
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
    return chosen.text, _finish(chosen)


def _finish(candidate: Candidate) -> FinishReason:
    if candidate.tool_calls:
        return "tool_calls"
    return "length" if candidate.finish_reason == "length" else "stop"


def _message(text: str, calls: Sequence[ToolCall]) -> AssistantMessage:
    """An answer's message: its text, and its tool calls when it makes any."""
    if not calls:
        return AssistantMessage(content=text)
    return AssistantMessage(
        content=text,
        tool_calls=[
            ToolCallOut(
                id=c.id or f"call_{uuid.uuid4().hex[:24]}",
                function=FunctionCall(name=c.name, arguments=c.arguments),
            )
            for c in calls
        ],
    )


def _runners_up(plan: Plan, outcome: Outcome, answer: str) -> list[Candidate]:
    """The choices after the answer (OpenAI ``n`` > 1): the best-ranked other candidates
    that passed every gate and were finished, each text once. None when the answer is
    a stand-in (fallback or refusal): no candidate was fit to be the first."""
    result = outcome.result
    if plan.choices <= 1 or result is None or result.best is None:
        return []
    eligible = [
        c
        for i, c in enumerate(result.candidates)
        if i != result.best and c.passed and c.state == "complete"
    ]
    seen = {answer}
    found: list[Candidate] = []
    for candidate in sorted(eligible, key=rank_key, reverse=True):
        if len(found) == plan.choices - 1:
            break
        # An answer that calls tools is told apart by its calls too.
        key = candidate.text + "".join(f"\0{c.name}\0{c.arguments}" for c in candidate.tool_calls)
        if key not in seen:
            seen.add(key)
            found.append(candidate)
    return found


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
    for choice in body.choices:
        if choice.index:  # the first choice's role went out in the first chunk
            yield event(
                _chunk(rid, created, model, Delta(role="assistant", content=""), index=choice.index)
            )
        for piece in split_text(choice.message.content):
            yield event(_chunk(rid, created, model, Delta(content=piece), index=choice.index))
        if choice.message.tool_calls:
            # Each call whole in one chunk; clients join argument pieces, so one piece works.
            calls = [
                DeltaToolCall(index=k, id=c.id, function=c.function)
                for k, c in enumerate(choice.message.tool_calls)
            ]
            yield event(_chunk(rid, created, model, Delta(tool_calls=calls), index=choice.index))
        # The extension rides on the chunk that ends the last choice.
        last = choice.index == len(body.choices) - 1
        ext = body.aligntime if last else None
        yield event(_chunk(rid, created, model, Delta(), choice.finish_reason, ext, choice.index))
    if include_usage:
        yield event(
            ChatCompletionChunk(id=rid, created=created, model=model, choices=[], usage=body.usage)
        )
    yield b"data: [DONE]\n\n"


KEEPALIVE = b": keep-alive\n\n"
"""An SSE comment line: clients skip it, proxies see traffic on an idle stream."""


async def keepalive(work: asyncio.Future[Any], every: float) -> AsyncIterator[bytes]:
    """:data:`KEEPALIVE` every ``every`` seconds until ``work`` is done.

    Starlette's ``StreamingResponse`` streams what is yielded; FastAPI's own
    ``EventSourceResponse`` pings too, but every 15 s (a private module constant),
    above what proxies with short idle time-outs allow. A consumer that stops
    early (the client left) cancels ``work``.
    """
    try:
        while not work.done():
            done, _ = await asyncio.wait({work}, timeout=every)
            if not done:
                yield KEEPALIVE
    finally:
        if not work.done():
            work.cancel()


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
    index: int = 0,
) -> ChatCompletionChunk:
    choice = ChunkChoice(index=index, delta=delta, finish_reason=finish)
    return ChatCompletionChunk(
        id=rid, created=created, model=model, choices=[choice], aligntime=aligntime
    )
