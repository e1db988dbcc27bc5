"""The audit log: every request, candidate, score and decision, in SQLite (WAL mode).

Writes go through one writer thread that owns the connection: requests queue
their rows, the thread commits whatever has queued in one transaction, then
wakes the requests it committed. The server answers a request only after its
rows are committed, so a SIGKILL never loses an acknowledged request.
WAL with ``synchronous=NORMAL`` makes a commit durable against a killed
process (the WAL is in the operating system's cache); ``durable=True`` uses
``synchronous=FULL`` to survive power loss too, at an fsync per commit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aligntime.errors import ConfigError

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    key_id TEXT,
    model TEXT NOT NULL,
    status INTEGER NOT NULL,
    stream INTEGER NOT NULL,
    messages TEXT NOT NULL,
    answer TEXT,
    best INTEGER,
    fallback INTEGER NOT NULL,
    fail_closed INTEGER NOT NULL,
    strategy TEXT,
    n INTEGER,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    timings TEXT,
    error TEXT,
    user TEXT
);
CREATE TABLE IF NOT EXISTS candidates (
    request_id TEXT NOT NULL REFERENCES requests(id),
    idx INTEGER NOT NULL,
    text TEXT NOT NULL,
    score REAL,
    scores TEXT NOT NULL,
    passed INTEGER NOT NULL,
    gate_failures TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    finish_reason TEXT,
    chosen INTEGER NOT NULL,
    PRIMARY KEY (request_id, idx)
);
CREATE INDEX IF NOT EXISTS requests_created ON requests(created);
"""

_REQUEST_COLUMNS = (
    "id, created, key_id, model, status, stream, messages, answer, best, fallback, "
    "fail_closed, strategy, n, prompt_tokens, completion_tokens, timings, error, user"
)


@dataclass
class AuditRecord:
    """One request and its candidates, ready to insert."""

    request: tuple[Any, ...]
    candidates: list[tuple[Any, ...]] = field(default_factory=list)


def _connect(path: Path, *, durable: bool) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(SCHEMA)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(
            f"cannot open the audit database {path}: {exc}",
            hint="give --audit-db a writable file path",
        ) from exc
    return conn


class AuditLog:
    """Asynchronous, batching writer of audit records."""

    def __init__(self, path: Path, *, durable: bool = False, max_batch: int = 256) -> None:
        self.path = path
        self._conn = _connect(path, durable=durable)
        self._queue: queue.SimpleQueue[
            tuple[AuditRecord, asyncio.AbstractEventLoop, asyncio.Future[None]] | None
        ] = queue.SimpleQueue()
        self._max_batch = max_batch
        self._thread = threading.Thread(target=self._run, name="aligntime-audit", daemon=True)
        self._thread.start()

    async def write(self, record: AuditRecord) -> None:
        """Queue a record and return once it is committed."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.put((record, loop, done))
        await done

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            batch = [item]
            # Everything already queued goes into the same transaction: one commit
            # (one WAL append) for many requests under load.
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            error: BaseException | None = None
            try:
                self._commit([rec for rec, _, _ in batch])
            except sqlite3.Error as exc:
                log.error("audit log write failed: %s", exc)
                error = exc
            for _, loop, fut in batch:
                loop.call_soon_threadsafe(_settle, fut, error)

    def _commit(self, records: list[AuditRecord]) -> None:
        conn = self._conn
        conn.execute("BEGIN")
        try:
            conn.executemany(
                f"INSERT OR REPLACE INTO requests ({_REQUEST_COLUMNS}) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [r.request for r in records],
            )
            conn.executemany(
                "INSERT OR REPLACE INTO candidates VALUES (?,?,?,?,?,?,?,?,?,?)",
                [c for r in records for c in r.candidates],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Finish queued writes and close the database."""
        self._queue.put(None)
        self._thread.join(timeout=30)
        self._conn.close()


def _settle(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


def read_requests(path: Path, last: int | None = None) -> list[dict[str, Any]]:
    """The newest ``last`` requests (all when ``None``), oldest first, with candidates."""
    if not path.is_file():
        raise ConfigError(f"audit database {path} does not exist", hint="check --db")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        limit = "" if last is None else f" LIMIT {int(last)}"
        rows = conn.execute(
            f"SELECT * FROM requests ORDER BY created DESC, rowid DESC{limit}"
        ).fetchall()
        out: list[dict[str, Any]] = []
        for row in reversed(rows):
            item = dict(row)
            for key in ("messages", "timings"):
                item[key] = json.loads(item[key]) if item[key] else None
            for key in ("fallback", "fail_closed", "stream"):
                item[key] = bool(item[key])
            cands = conn.execute(
                "SELECT * FROM candidates WHERE request_id = ? ORDER BY idx", (item["id"],)
            ).fetchall()
            item["candidates"] = [
                {
                    **dict(c),
                    "scores": json.loads(c["scores"]),
                    "gate_failures": json.loads(c["gate_failures"]),
                    "passed": bool(c["passed"]),
                    "chosen": bool(c["chosen"]),
                }
                for c in cands
            ]
            for c in item["candidates"]:
                c.pop("request_id", None)
            out.append(item)
        conn.close()
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot read the audit database {path}: {exc}") from exc
    return out
