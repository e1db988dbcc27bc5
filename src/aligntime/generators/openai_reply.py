"""Reading chat-completion replies: candidates, token counts and usage.

Each candidate's ``tokens`` is exact when its choice carries per-token
log-probabilities, or when it came alone in its reply (the reply's
``usage.completion_tokens``). Otherwise it is an *estimate*: the reply's
completion tokens shared out by text length, or about four characters per
token when the server sends no usage at all (logged at debug level). Usage is
the server's own, summed over replies; where every candidate's count is exact
their sum is used instead, because some servers (llama.cpp) count only the
first choice of an ``n`` request.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from aligntime.errors import BackendError
from aligntime.types import Candidate, Usage

log = logging.getLogger(__name__)


def choices_of(reply: dict[str, Any]) -> list[dict[str, Any]]:
    """The reply's choices, checked for the fields aligntime reads."""
    choices = reply.get("choices")
    if not isinstance(choices, list):
        raise BackendError(
            f"the server's reply has no 'choices' list: {str(reply)[:200]}",
            hint="is base_url an OpenAI-compatible API root (usually ending in /v1)?",
        )
    for choice in choices:
        if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
            raise BackendError(f"the server's reply has a choice without a message: {choice!r}")
    return choices


def collect(replies: list[dict[str, Any]]) -> tuple[list[Candidate], Usage]:
    """Candidates and summed usage from one native reply or several fan-out replies."""
    candidates: list[Candidate] = []
    prompt_tokens = server_completion = 0
    all_exact = True
    for reply in replies:
        choices = sorted(choices_of(reply), key=lambda c: int(c.get("index", 0) or 0))
        usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else None
        completion = _int(usage, "completion_tokens") if usage else None
        prompt_tokens += (_int(usage, "prompt_tokens") if usage else None) or 0
        server_completion += completion or 0
        texts = [str(c["message"].get("content") or "") for c in choices]
        counts: list[int] = []
        for choice, text in zip(choices, texts, strict=True):
            exact = (choice.get("logprobs") or {}).get("content")
            if isinstance(exact, list):
                counts.append(len(exact))
            elif len(choices) == 1 and completion is not None:
                counts.append(completion)
            else:
                all_exact = False
                counts.append(_estimate(text, texts, completion))
        for choice, text, tokens in zip(choices, texts, counts, strict=True):
            finish = choice.get("finish_reason")
            candidates.append(
                Candidate(
                    text=text,
                    tokens=tokens,
                    finish_reason=str(finish or "unknown"),
                    logprob=_sequence_logprob(choice),
                )
            )
    completion_tokens = (
        sum(c.tokens for c in candidates)
        if all_exact or not server_completion
        else server_completion
    )
    return candidates, Usage(prompt_tokens, completion_tokens)


def _sequence_logprob(choice: dict[str, Any]) -> float | None:
    """Sum of the sampled tokens' log-probabilities, when the choice carries them."""
    content = (choice.get("logprobs") or {}).get("content")
    if not isinstance(content, list) or not content:
        return None
    try:
        return sum(float(e["logprob"]) for e in content)
    except (KeyError, TypeError, ValueError):
        return None


def _estimate(text: str, texts: list[str], completion: int | None) -> int:
    """An estimated token count: the reply's completion tokens shared out by text length."""
    if completion:
        total = sum(len(t) for t in texts) or 1
        tokens = round(completion * len(text) / total)
    else:
        tokens = math.ceil(len(text) / 4)
    log.debug("estimated %d tokens for a %d-character candidate", tokens, len(text))
    return tokens


def _int(usage: dict[str, Any], key: str) -> int | None:
    value = usage.get(key)
    return int(value) if isinstance(value, int | float) else None
