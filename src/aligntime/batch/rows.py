"""Input rows of a batch: a prompt or a conversation, with an id, from JSONL or Parquet.

Each row is ``{"id": ..., "prompt": "..."}`` or ``{"id": ..., "messages": [{"role",
"content"}, ...]}``. The id is what resuming matches on; a row without one gets its
1-based row number, which stays stable as long as the file is not edited. A
malformed row is an :class:`~aligntime.errors.InputError` naming the file and row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aligntime.errors import InputError
from aligntime.training.data import _json_rows as json_rows  # the shared file:line reader
from aligntime.types import Message

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class BatchRow:
    """One request of a batch: its id and its conversation (the prompt as one user turn)."""

    id: str
    messages: tuple[Message, ...]
    numbered: bool = False
    """The row had no id and got its row number."""


def parse_row(data: Any, where: str, number: int) -> BatchRow:
    """One input row from its parsed value; ``where`` (file:row) names it in errors."""
    if not isinstance(data, Mapping):
        raise InputError(f"{where}: a row must be a JSON object with 'prompt' or 'messages'")
    raw_id = data.get("id")
    numbered = raw_id is None
    if raw_id is None:
        row_id = str(number)
    elif isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool):
        row_id = str(raw_id)
    else:
        raise InputError(f"{where}: 'id' must be a string or an integer, got {raw_id!r}")
    # A columnar reader (Parquet, Ray's JSON reader) gives every row both columns, the
    # missing one as null, an empty list or NaN: only a value counts as given.
    prompt = data.get("prompt") if _given(data.get("prompt")) else None
    messages = data.get("messages") if _given(data.get("messages")) else None
    if (prompt is None) == (messages is None):
        raise InputError(f"{where}: give exactly one of 'prompt' (a string) or 'messages'")
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError(f"{where}: 'prompt' must be a non-empty string")
        return BatchRow(row_id, (Message("user", prompt),), numbered)
    return BatchRow(row_id, _messages(messages, where), numbered)


def _given(value: Any) -> bool:
    """Not null, an empty list or a pandas NaN (how columnar readers write a missing value)."""
    return value is not None and not (isinstance(value, float) and value != value) and value != []


def _messages(value: Any, where: str) -> tuple[Message, ...]:
    if isinstance(value, str):  # a Parquet column written as JSON text
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise InputError(f"{where}: 'messages' is a string but not JSON ({exc})") from exc
    if not isinstance(value, list) or not value:
        raise InputError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    out = []
    for i, m in enumerate(value):
        if (
            not isinstance(m, Mapping)
            or m.get("role") not in ROLES
            or not isinstance(m.get("content"), str)
        ):
            raise InputError(
                f"{where}: messages[{i}] must be {{role: system|user|assistant, content: string}}"
            )
        out.append(Message(m["role"], m["content"]))
    if not any(m.role == "user" and m.content.strip() for m in out):
        raise InputError(f"{where}: 'messages' has no non-empty user turn")
    return tuple(out)


def read_rows(path: Path) -> list[BatchRow]:
    """Every row of a JSONL (``.jsonl``, ``.json``) or Parquet (``.parquet``) file.

    Ids must be unique: two rows with one id could not both be resumed.
    """
    if not path.is_file():
        raise InputError(f"input file {str(path)!r} does not exist")
    rows: list[BatchRow] = []
    seen: dict[str, str] = {}
    source = _parquet_rows(path) if is_parquet(path) else json_rows(path)
    for number, (where, data) in enumerate(source, 1):
        row = parse_row(data, where, number)
        if row.id in seen:
            raise InputError(f"{where}: id {row.id!r} was already used at {seen[row.id]}")
        seen[row.id] = where
        rows.append(row)
    if not rows:
        raise InputError(f"{path}: no rows", hint="one JSON object per line: {id, prompt}")
    return rows


def is_parquet(path: Path) -> bool:
    """Whether a path names a Parquet file (by its suffix)."""
    return path.suffix.lower() == ".parquet"


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    pq = require_pyarrow("reading Parquet input")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises its own error types for a bad file
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from exc
    for index, row in enumerate(table.to_pylist(), 1):
        yield f"{path} row {index}", row


def require_pyarrow(what: str) -> Any:
    """``pyarrow.parquet``, or an error naming the extra that installs it."""
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        from aligntime.extras import missing

        raise missing(what, exc, extra="batch") from exc
    return pq
