"""Reading the audit log for the API: recent requests with filters, and one request whole.

The server's own database is opened read-only for each call (a second connection
next to the writer's, as WAL allows), so reading can never lock out or alter the
writes that answers wait on. Filters are SQL, so a large log is not read whole.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from aligntime.server.ui.reports import loads

Flag = Literal["fallback", "gate_failure", "scorer_error", "error"]
FLAGS: tuple[Flag, ...] = ("fallback", "gate_failure", "scorer_error", "error")
"""Filters of the list: a fallback was returned, a candidate failed a gate, a scorer
failed on an answered request, the request was answered with an error status."""

_WHERE: dict[Flag, str] = {
    "fallback": "r.fallback = 1",
    "gate_failure": "EXISTS (SELECT 1 FROM candidates c WHERE c.request_id = r.id "
    "AND c.passed = 0)",
    # On an answered request (200) the error column names the scorers that failed.
    "scorer_error": "r.status = 200 AND r.error IS NOT NULL",
    "error": "r.status <> 200",
}

_LIST_COLUMNS = (
    "r.id, r.created, r.key_id, r.model, r.status, r.stream, r.messages, r.answer, r.best, "
    "r.fallback, r.fail_closed, r.strategy, r.n, r.error, r.input_json, "
    "(SELECT COUNT(*) FROM candidates c WHERE c.request_id = r.id) AS candidates, "
    "(SELECT COUNT(*) FROM candidates c WHERE c.request_id = r.id AND c.passed = 0) AS failed"
)


class AuditReadError(Exception):
    """The database could not be read (it is missing, locked or not aligntime's)."""


def _connect(path: Path) -> sqlite3.Connection:
    uri = f"file:{quote(os.path.abspath(path))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise AuditReadError(str(exc)) from exc
    conn.row_factory = sqlite3.Row
    return conn


def list_requests(
    path: Path,
    *,
    limit: int,
    flags: tuple[Flag, ...] = (),
    policy: str | None = None,
    before: float | None = None,
) -> list[dict[str, Any]]:
    """The newest ``limit`` requests matching every filter, newest first, without
    candidates' text: ``candidates`` and ``failed`` count them."""
    where = [_WHERE[f] for f in flags]
    params: list[Any] = []
    if policy:
        where.append("r.model = ?")
        params.append(policy)
    if before is not None:
        where.append("r.created < ?")
        params.append(before)
    sql = f"SELECT {_LIST_COLUMNS} FROM requests r"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY r.created DESC, r.rowid DESC LIMIT ?"
    params.append(limit)
    conn = _connect(path)
    try:
        return [_request(row) for row in conn.execute(sql, params).fetchall()]
    except sqlite3.Error as exc:
        raise AuditReadError(str(exc)) from exc
    finally:
        conn.close()


def read_request(path: Path, rid: str) -> dict[str, Any] | None:
    """One request with every candidate and score; ``None`` when there is no such id."""
    conn = _connect(path)
    try:
        row = conn.execute(
            f"SELECT {_LIST_COLUMNS}, r.timings, r.prompt_tokens, r.completion_tokens, r.user "
            "FROM requests r WHERE r.id = ?",
            (rid,),
        ).fetchone()
        if row is None:
            return None
        item = _request(row)
        item["timings"] = _json(row["timings"])
        for key in ("prompt_tokens", "completion_tokens", "user"):
            item[key] = row[key]
        cands = conn.execute(
            "SELECT idx, text, score, scores, passed, gate_failures, tokens, finish_reason, "
            "chosen FROM candidates WHERE request_id = ? ORDER BY idx",
            (rid,),
        ).fetchall()
    except sqlite3.Error as exc:
        raise AuditReadError(str(exc)) from exc
    finally:
        conn.close()
    item["candidates"] = [
        {
            "index": c["idx"],
            "text": c["text"],
            "score": c["score"],
            "scores": _json(c["scores"]) or {},
            "passed": bool(c["passed"]),
            "gate_failures": _json(c["gate_failures"]) or [],
            "tokens": c["tokens"],
            "finish_reason": c["finish_reason"],
            "chosen": bool(c["chosen"]),
        }
        for c in cands
    ]
    return item


def _request(row: sqlite3.Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "created": row["created"],
        "key_id": row["key_id"],
        "policy": row["model"],
        "status": row["status"],
        "stream": bool(row["stream"]),
        "messages": _json(row["messages"]) or [],
        "answer": row["answer"],
        "best": row["best"],
        "fallback": bool(row["fallback"]),
        "fail_closed": bool(row["fail_closed"]),
        "strategy": row["strategy"],
        "n": row["n"],
        "error": row["error"],
        "input": _json(row["input_json"]),
        "candidates": row["candidates"],
        "failed": row["failed"],
    }


def _json(text: Any) -> Any:
    """A JSON column's value; ``None`` for an empty or unreadable one (the row is still
    shown: one damaged cell must not hide the log)."""
    if not text:
        return None
    try:
        return loads(text)
    except (TypeError, ValueError):
        return None
