"""The audit log: every request, candidate, score and decision, in SQLite (WAL mode).

Writes go through one writer thread that owns the connection: requests queue
their rows, the thread commits whatever has queued in one transaction, then
wakes the requests it committed. The server answers a request only after its
rows are committed, so a SIGKILL never loses an acknowledged request.
WAL with ``synchronous=NORMAL`` makes a commit durable against a killed
process (the WAL is in the operating system's cache); ``durable=True`` uses
``synchronous=FULL`` to survive power loss too, at an fsync per commit.

The writer never dies and never leaves a request waiting: whatever goes wrong
(SQLite, a full disk, a bug) settles every queued request with
:class:`AuditUnavailable`, and :attr:`AuditLog.problem` says why until a write
succeeds again. A database file removed or replaced while serving is detected
before each commit (its inode changed or vanished) and never written again:
rows written to a deleted file would be lost silently.

The schema carries its version in ``PRAGMA user_version``; opening a database
for writing migrates an older one in place (``_MIGRATIONS``), and reading
(:func:`read_requests`) never writes or creates anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aligntime.errors import ConfigError, InputError
from aligntime.server.protocol import CandidateOut
from aligntime.server.text import storable_value

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
"""The schema this aligntime writes; ``PRAGMA user_version`` of its databases."""

# Version 0: the tables as first released (no version recorded).
_TABLES = (
    """CREATE TABLE IF NOT EXISTS requests (
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
)""",
    """CREATE TABLE IF NOT EXISTS candidates (
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
)""",
    "CREATE INDEX IF NOT EXISTS requests_created ON requests(created)",
)

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 0 -> 1: a one-row table that the health probe writes, to learn whether a
    # failed log (a full disk) takes writes again.
    0: (
        "CREATE TABLE IF NOT EXISTS health "
        "(id INTEGER PRIMARY KEY CHECK (id = 1), checked REAL NOT NULL)",
    ),
    # 1 -> 2: the input gate's verdict: its action as a column of its own (to filter
    # on in SQL) and the whole decision as JSON. NULL for a policy without a gate,
    # a failed request, and every row written before.
    1: (
        "ALTER TABLE requests ADD COLUMN input_action TEXT",
        "ALTER TABLE requests ADD COLUMN input_json TEXT",
    ),
    # 2 -> 3: where a candidate came from (sampled, or the input gate's offered
    # refusal) and the tools it calls as JSON, so an answer that is a tool call is
    # recorded with its arguments. NULL in rows written before.
    2: (
        "ALTER TABLE candidates ADD COLUMN origin TEXT",
        "ALTER TABLE candidates ADD COLUMN tool_calls TEXT",
    ),
}
"""Statements that bring a database from version ``key`` to ``key + 1``."""


class AuditUnavailable(Exception):
    """A record could not be committed; ``reason`` says why (no paths, no row data)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class RequestRow:
    """One row of the ``requests`` table: each field is the column of the same name.

    The defaults are those of a request that failed before anything was aligned.
    """

    id: str
    created: float
    key_id: str | None
    """The API key's id (never the key); ``None`` without authentication."""
    model: str
    """The served policy's name (the request's ``model`` when it named none)."""
    status: int
    """The HTTP status answered."""
    stream: bool
    messages: list[dict[str, str]]
    """The conversation, ``role`` and ``content`` per message."""
    answer: str | None = None
    best: int | None = None
    fallback: bool = False
    fail_closed: bool = False
    strategy: str | None = None
    n: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    timings: dict[str, float] | None = None
    error: str | None = None
    """``code: message`` of an error answer."""
    user: str | None = None
    """The request's ``user`` field."""


@dataclass(frozen=True)
class AuditRecord:
    """One request and its candidates, ready to insert.

    ``candidates`` are every candidate as the API shows them (``return_candidates``),
    in order: each is a ``candidates`` row of the request, its position the ``idx``.
    ``input`` is the input gate's decision (``RequestAssessment.to_dict()``),
    ``None`` when the policy has no gate or the request failed before it ran.
    """

    request: RequestRow
    candidates: list[CandidateOut] = field(default_factory=list)
    input: dict[str, Any] | None = None

    def rows(self) -> _Rows:
        """The rows by column name, JSON columns encoded, every string valid UTF-8
        (SQLite refuses lone surrogates)."""
        request = {k: _column(k, v) for k, v in asdict(self.request).items()}
        request["input_action"] = None if self.input is None else str(self.input.get("action"))
        request["input_json"] = _column("input_json", self.input)
        rid = self.request.id
        candidates = [
            {"request_id": rid, "idx": i, **{k: _column(k, row.get(k)) for k in _CANDIDATE}}
            for i, row in enumerate(c.model_dump() for c in self.candidates)
        ]
        return _Rows(request, candidates)


_UNICODE_JSON = frozenset({"messages", "input_json"})
"""JSON columns written with their text as it is; the others hold names and numbers."""


def _column(name: str, value: Any) -> Any:
    """A value as its column stores it: JSON text for lists and dicts, strings cleaned."""
    if isinstance(value, dict | list):
        value = json.dumps(value, ensure_ascii=name not in _UNICODE_JSON)
    elif isinstance(value, bool):
        value = int(value)
    return storable_value(value)


@dataclass(frozen=True)
class _Rows:
    """A record's rows, keyed by column name."""

    request: dict[str, Any]
    candidates: list[dict[str, Any]]


def _insert(table: str, columns: list[str]) -> str:
    names = ", ".join(columns)
    values = ", ".join(f":{c}" for c in columns)
    return f"INSERT OR REPLACE INTO {table} ({names}) VALUES ({values})"


_INSERT_REQUEST = _insert("requests", [*(f.name for f in fields(RequestRow)), "input_action",
                                       "input_json"])  # fmt: skip
_CANDIDATE = ("text", "score", "scores", "passed", "gate_failures", "tokens", "finish_reason",
              "chosen", "origin", "tool_calls")  # fmt: skip
"""The ``candidates`` columns that hold the candidate (the others place it)."""
_INSERT_CANDIDATE = _insert("candidates", ["request_id", "idx", *_CANDIDATE])


@dataclass
class _Pending:
    """A queued write (``rows`` None: a health probe) and whom to wake."""

    rows: _Rows | None
    loop: asyncio.AbstractEventLoop
    done: asyncio.Future[None]


def _connect(path: Path, *, durable: bool) -> sqlite3.Connection:
    conn: sqlite3.Connection | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=5000")
        _migrate(conn, path)  # before WAL: a foreign database is refused untouched
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
    except (OSError, sqlite3.Error) as exc:
        if conn is not None:
            conn.close()
        raise ConfigError(
            f"cannot open the audit database {path}: {exc}",
            hint="give --audit-db a writable file path",
        ) from exc
    except BaseException:
        if conn is not None:
            conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Create or upgrade the schema to :data:`SCHEMA_VERSION`, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _version(conn, path)
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        if version == 0 and tables and "requests" not in tables:
            raise ConfigError(
                f"{path} is not an aligntime audit database (it holds other tables)",
                hint="give --audit-db a new file, or one that aligntime serve wrote",
            )
        if version < SCHEMA_VERSION:
            if version == 0:
                for statement in _TABLES:
                    conn.execute(statement)
            for step in range(version, SCHEMA_VERSION):
                for statement in _MIGRATIONS[step]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            if tables:
                log.info("audit database %s migrated from version %d", path, version)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _version(conn: sqlite3.Connection, path: Path) -> int:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise ConfigError(
            f"the audit database {path} has schema version {version}, newer than this "
            f"aligntime knows ({SCHEMA_VERSION})",
            hint="upgrade aligntime, or give --audit-db another file",
        )
    return version


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _describe(exc: BaseException) -> str:
    """A failure in words a client may read: SQLite's message, or only the type of a bug."""
    if isinstance(exc, AuditUnavailable):
        return exc.reason
    if isinstance(exc, sqlite3.Error | OSError):
        return str(exc) or type(exc).__name__
    return f"unexpected {type(exc).__name__}"


class AuditLog:
    """Asynchronous, batching writer of audit records."""

    def __init__(self, path: Path, *, durable: bool = False, max_batch: int = 256) -> None:
        self.path = Path(os.path.abspath(path))
        self._conn = _connect(self.path, durable=durable)
        self._identity = _identity(self.path)
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._max_batch = max_batch
        self._failure: str | None = None
        """Why the last write failed; cleared by the next write that succeeds."""
        self._lost: str | None = None
        """Why the log can never be written again (its file was removed or replaced)."""
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="aligntime-audit", daemon=True)
        self._thread.start()

    @property
    def problem(self) -> str | None:
        """Why records cannot be committed now; ``None`` while the log is healthy."""
        if self._closed:
            return "the audit log is closed"
        if not self._thread.is_alive():
            return "the audit writer stopped"
        return self._lost or self._failure

    async def write(self, record: AuditRecord) -> None:
        """Queue a record and return once it is committed; raises AuditUnavailable."""
        if self._lost or self._closed or not self._thread.is_alive():
            raise AuditUnavailable(self.problem or "the audit log is unavailable")
        await self._submit(record.rows())

    async def probe(self) -> str | None:
        """After a failure, try one small write; the problem that remains, if any."""
        if self.problem is None or self._lost or self._closed or not self._thread.is_alive():
            return self.problem
        with contextlib.suppress(AuditUnavailable):  # the state says what failed
            await self._submit(None)
        return self.problem

    async def _submit(self, rows: _Rows | None) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.put(_Pending(rows, loop, done))
        await done

    # --- the writer thread ------------------------------------------------------------

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
            try:
                errors = self._write_batch([p.rows for p in batch])
            except BaseException as exc:  # the writer must outlive any failure
                log.exception("audit writer failed")
                errors = [AuditUnavailable(_describe(exc))] * len(batch)
            for pending, error in zip(batch, errors, strict=True):
                _wake(pending, error)
        # Closed: nothing queued after the sentinel may wait forever.
        while True:
            try:
                left = self._queue.get_nowait()
            except queue.Empty:
                break
            if left is not None:
                _wake(left, AuditUnavailable("the audit log is closed"))

    def _write_batch(self, records: list[_Rows | None]) -> list[AuditUnavailable | None]:
        """Commit ``records``; one error (or None) per record."""
        lost = self._check_file()
        if lost:
            return [AuditUnavailable(lost)] * len(records)
        try:
            self._commit(records)
        except Exception as exc:
            if len(records) == 1:
                return [self._failed(exc)]
            # One record that cannot be stored must not fail the rest of its batch.
            return [self._write_one(r) for r in records]
        self._recovered()
        return [None] * len(records)

    def _write_one(self, record: _Rows | None) -> AuditUnavailable | None:
        try:
            self._commit([record])
        except Exception as exc:
            return self._failed(exc)
        self._recovered()
        return None

    def _failed(self, exc: BaseException) -> AuditUnavailable:
        reason = _describe(exc)
        if reason != self._failure:  # log a change of state, not every request of an outage
            log.error("audit log write failed: %s", reason, exc_info=not _expected(exc))
        self._failure = reason
        return AuditUnavailable(reason)

    def _recovered(self) -> None:
        if self._failure is not None:
            log.warning("audit log writes succeed again (after: %s)", self._failure)
            self._failure = None

    def _check_file(self) -> str | None:
        """Why the database can no longer be written: its file was removed or replaced."""
        if self._lost:
            return self._lost
        now = _identity(self.path)
        if now == self._identity:
            return None
        self._lost = (
            "the audit database file was removed"
            if now is None
            else "the audit database file was replaced by another file"
        )
        log.error("%s (%s); no answer is given until the server restarts", self._lost, self.path)
        return self._lost

    def _commit(self, records: list[_Rows | None]) -> None:
        conn = self._conn
        conn.execute("BEGIN")
        try:
            rows = [r for r in records if r is not None]
            if rows:
                conn.executemany(_INSERT_REQUEST, [r.request for r in rows])
                conn.executemany(_INSERT_CANDIDATE, [c for r in rows for c in r.candidates])
            if len(rows) < len(records):
                conn.execute(
                    "INSERT OR REPLACE INTO health (id, checked) VALUES (1, ?)", (time.time(),)
                )
            conn.execute("COMMIT")
        except BaseException:
            # SQLite ends the transaction itself on some errors (a full disk); a second
            # ROLLBACK would then fail and hide the real error behind "no transaction".
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error as rollback:
                    log.debug("audit rollback failed too: %s", rollback)
            raise

    def close(self) -> None:
        """Finish queued writes and close the database (again: nothing)."""
        if self._closed:
            return
        self._queue.put(None)
        self._thread.join(timeout=30)
        self._closed = True
        self._conn.close()


def _expected(exc: BaseException) -> bool:
    """A failure of the disk or the database, not of aligntime (no traceback needed)."""
    return isinstance(exc, sqlite3.Error | OSError | AuditUnavailable)


def _wake(pending: _Pending, error: BaseException | None) -> None:
    # A closed event loop raises RuntimeError: nobody waits for this record any more.
    with contextlib.suppress(RuntimeError):
        pending.loop.call_soon_threadsafe(_settle, pending.done, error)


def _settle(fut: asyncio.Future[None], error: BaseException | None) -> None:
    if fut.done():  # the request stopped waiting (its time-out)
        return
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)


# --- reading ----------------------------------------------------------------------------


def _read_only_uri(path: Path) -> str:
    """A URI that opens ``path`` read-only and creates nothing.

    The path is percent-quoted: ``#`` or ``?`` in a file name would otherwise end
    the path and drop ``mode=ro``. Without a WAL file (no server writing) the
    database is opened immutable, because a read-only connection to a WAL-mode
    database still creates the ``-wal`` and ``-shm`` files; with one, those exist.
    """
    absolute = os.path.abspath(path)
    immutable = "" if os.path.exists(absolute + "-wal") else "&immutable=1"
    return f"file:{quote(absolute)}?mode=ro{immutable}"


def read_requests(path: Path, last: int | None = None) -> list[dict[str, Any]]:
    """The newest ``last`` requests (all when ``None``), oldest first, with candidates."""
    if last is not None and last < 1:
        raise InputError(f"--last must be at least 1, got {last}")
    if not path.is_file():
        raise ConfigError(f"audit database {path} does not exist", hint="check --db")
    try:
        conn = sqlite3.connect(_read_only_uri(path), uri=True)
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot open the audit database {path}: {exc}") from exc
    try:
        _version(conn, path)
        return _read(conn, path, last)
    except sqlite3.Error as exc:
        raise ConfigError(f"cannot read the audit database {path}: {exc}") from exc
    finally:
        conn.close()


def _read(conn: sqlite3.Connection, path: Path, last: int | None) -> list[dict[str, Any]]:
    conn.row_factory = sqlite3.Row
    limit = "" if last is None else f" LIMIT {int(last)}"
    rows = conn.execute(f"SELECT * FROM requests ORDER BY created DESC, rowid DESC{limit}")
    out: list[dict[str, Any]] = []
    for row in reversed(rows.fetchall()):
        item = dict(row)
        rid = item["id"]
        for key in ("messages", "timings"):
            item[key] = _json(path, rid, key, item[key]) if item[key] else None
        # Rows of a version-1 database (read as it is, never migrated) have no verdict.
        item.pop("input_action", None)
        decision = item.pop("input_json", None)
        item["input"] = _json(path, rid, "input_json", decision) if decision else None
        for key in ("fallback", "fail_closed", "stream"):
            item[key] = bool(item[key])
        cands = conn.execute(
            "SELECT * FROM candidates WHERE request_id = ? ORDER BY idx", (rid,)
        ).fetchall()
        item["candidates"] = [
            {
                **{k: c[k] for k in c.keys() if k != "request_id"},  # noqa: SIM118 (a Row iterates values)
                "scores": _json(path, rid, "candidates.scores", c["scores"]),
                "gate_failures": _json(path, rid, "candidates.gate_failures", c["gate_failures"]),
                "passed": bool(c["passed"]),
                "chosen": bool(c["chosen"]),
                # Written from schema 3 on (NULL before, absent from an older file read as is).
                **(
                    {"tool_calls": _json(path, rid, "candidates.tool_calls", c["tool_calls"])}
                    if "tool_calls" in c.keys() and c["tool_calls"] is not None  # noqa: SIM118
                    else {}
                ),
            }
            for c in cands
        ]
        out.append(item)
    return out


def _json(path: Path, rid: str, column: str, text: Any) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"audit database {path}: request {rid}: column {column} is not JSON ({exc})",
            hint="the file was not written by aligntime serve, or was edited",
        ) from exc
