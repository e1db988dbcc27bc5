"""The server-sent events of ``aligntime.stream_mode: "early"`` (stream while selecting).

The selection (input gate, then early rejection down to one survivor) runs as a
request's alignment does (:meth:`AlignmentService.run`: the same time limit and
the same API errors, which arrive as an error event). Then the survivor's text
goes out as :class:`~aligntime.streaming.EarlyAnswer` releases it, each window
only after it passed every gate. If a later window fails, the answer ends with
the policy's fallback notice and ``finish_reason: content_filter``.

Unlike ``whole`` mode, text goes out before the audit commit; the audit row,
committed before the last chunk (``finish_reason`` and the extension), records
exactly the text that was sent, the notice included. A failed commit ends the
stream with the ``audit_unavailable`` error event instead of that last chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import TYPE_CHECKING

from aligntime.server.errors import ApiError
from aligntime.server.planning import Plan
from aligntime.server.protocol import ChatCompletion, ChatCompletionChunk, ChunkChoice, Delta
from aligntime.server.responses import (
    answer_chunks,
    completion,
    error_events,
    event,
    keepalive,
    split_text,
)
from aligntime.streaming import EarlyAnswer

if TYPE_CHECKING:
    from aligntime.server.service import AlignmentService, _Call

log = logging.getLogger(__name__)

NOTICE_SEPARATOR = "\n\n"
"""Between the text already sent and the fallback notice that ends a blocked answer."""


async def events(service: AlignmentService, call: _Call, plan: Plan) -> AsyncIterator[bytes]:
    """The events after the role chunk: the answer as released, then the last chunk."""
    early = EarlyAnswer(plan.aligner, plan.request, deadline=call.deadline)
    # Comment lines while the survivor is chosen, as on the whole-answer path.
    work = asyncio.ensure_future(service.run(plan, call.ctx, call.deadline, work=early.select()))
    try:
        async for ping in keepalive(work, service.options.keepalive_s):
            yield ping
        outcome = work.result()
    except ApiError as exc:
        await service._audit_error(call, exc)
        yield error_events(exc)
        return
    model = plan.served.policy.name
    if outcome.result is not None:
        # Closed at once when the client leaves: the survivor's decoding stops with it.
        async with contextlib.aclosing(early.texts()) as texts:
            async for text in texts:
                for piece in split_text(text):
                    yield _content(call, model, piece)
        final = early.result or outcome.result
        outcome = replace(
            outcome, result=final, usage=final.usage, candidates_generated=len(final.candidates)
        )
        if early.blocked:
            service.metrics.fallbacks.labels(model, "output_window").inc()
    body = completion(plan, outcome, call.rid, call.created)
    sent = _sent(early, body)
    if sent != early.sent:  # the fallback, the refusal or the notice: not streamed yet
        for piece in split_text(sent[len(early.sent) :]):
            yield _content(call, model, piece)
    body = _as_sent(body, sent, early)
    try:
        await service._audit(call, plan, outcome, body)
    except ApiError as exc:
        yield error_events(exc)
        return
    req = call.req
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    tail = body.model_copy(update={"choices": [body.choices[0].model_copy(deep=True)]})
    tail.choices[0].message.content = ""  # the text went out already
    for chunk in answer_chunks(tail, include_usage=include_usage):
        yield chunk


def _sent(early: EarlyAnswer, body: ChatCompletion) -> str:
    """Everything the client receives as the answer's text."""
    text = body.choices[0].message.content
    if not early.sent:
        return text  # nothing released: the whole-mode answer (fallback or refusal)
    if early.blocked:
        return early.sent + NOTICE_SEPARATOR + text
    return early.sent


def _as_sent(body: ChatCompletion, sent: str, early: EarlyAnswer) -> ChatCompletion:
    """``body`` holding the text as sent (what the audit row records), and when the first
    text went out (``timings.first_content_s``, an addition to the extension)."""
    choice = body.choices[0].model_copy(deep=True)
    choice.message.content = sent
    ext = body.aligntime.model_copy(deep=True)
    if early.first_text_s is not None:
        ext.timings["first_content_s"] = early.first_text_s
    return body.model_copy(update={"choices": [choice], "aligntime": ext})


def _content(call: _Call, model: str, piece: str) -> bytes:
    chunk = ChatCompletionChunk(
        id=call.rid,
        created=call.created,
        model=model,
        choices=[ChunkChoice(delta=Delta(content=piece))],
    )
    return event(chunk)
