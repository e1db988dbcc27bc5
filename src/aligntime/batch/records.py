"""One output record per input row, the same in one process and on Ray.

A record holds the chosen answer, every candidate with its scores, usage and
timings::

    {"id", "policy", "messages", "text", "best", "fallback", "refused", "error",
     "candidates": [Candidate.to_record(): {"text", "tokens", "finish_reason", "scores",
                     "score", "passed", "gate_failures", "logprob", "state", "origin"}],
     "usage": {"prompt_tokens", "completion_tokens"},
     "timings": {"generate_s", "score_s", "total_s"}, "input": {...} | null}

A failed scorer's value is NaN inside aligntime and ``null`` here, so every line is
strict JSON (Parquet, ``datasets`` and ``jq`` read it). ``error`` is ``null`` except
for a row whose request was invalid (e.g. longer than the model's context): the
message, with no candidates.
"""

from __future__ import annotations

from typing import Any

from aligntime.types import Candidate, Message, Result

NESTED = ("messages", "candidates", "usage", "timings", "input")
"""Fields that hold lists or objects (JSON text in a Parquet column)."""


def candidate_record(candidate: Candidate) -> dict[str, Any]:
    """One candidate as a record: the candidates' one codec (strict JSON: NaN is null)."""
    return candidate.to_record()


def row_record(row_id: str, result: Result) -> dict[str, Any]:
    """The output record of one aligned row."""
    return {
        "id": row_id,
        "policy": result.policy,
        "messages": [m.to_dict() for m in result.messages],
        "text": result.text,
        "best": result.best,
        "fallback": result.fallback,
        "refused": result.refused,
        "error": None,
        "candidates": [candidate_record(c) for c in result.candidates],
        "usage": result.usage.to_dict(),
        "timings": result.timings.to_dict(),
        "input": result.input.to_dict() if result.input is not None else None,
    }


def error_record(
    row_id: str, policy: str, messages: tuple[Message, ...], error: str
) -> dict[str, Any]:
    """The record of a row whose request aligntime refused as invalid."""
    return {
        "id": row_id,
        "policy": policy,
        "messages": [m.to_dict() for m in messages],
        "text": None,
        "best": None,
        "fallback": None,
        "refused": False,
        "error": error,
        "candidates": [],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0},
        "timings": {"generate_s": 0.0, "score_s": 0.0, "total_s": 0.0},
        "input": None,
    }
