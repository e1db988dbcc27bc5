"""The audit log fails closed and says why; its schema is versioned; reading never writes.

Issue 18 items 5 (the database removed or replaced under a running server),
7 (``aligntime audit`` inputs) and 9 (a full disk reported as a full disk), and
issue 13 item 6 (``PRAGMA user_version`` with a migration path).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from aligntime.cli.main import app as cli
from aligntime.errors import AligntimeError, ConfigError
from aligntime.policy.loader import parse_policy
from aligntime.server import ServerOptions, app_from_policies
from aligntime.server.audit import (
    SCHEMA_VERSION,
    AuditLog,
    AuditRecord,
    RequestRow,
    read_requests,
)
from aligntime.server.protocol import CandidateOut
from aligntime.server.testing import LiveServer

POLICY = """
name: p
generator: {backend: fake, responses: ["Boil the egg for seven minutes."]}
n: 1
scorers:
  - {name: rules, kind: rules}
"""
BODY = {"model": "p", "messages": [{"role": "user", "content": "How do I boil an egg?"}]}

# The audit schema as aligntime 0.1.0 wrote it, before it carried a version.
SCHEMA_V0 = """
CREATE TABLE requests (
    id TEXT PRIMARY KEY, created REAL NOT NULL, key_id TEXT, model TEXT NOT NULL,
    status INTEGER NOT NULL, stream INTEGER NOT NULL, messages TEXT NOT NULL, answer TEXT,
    best INTEGER, fallback INTEGER NOT NULL, fail_closed INTEGER NOT NULL, strategy TEXT,
    n INTEGER, prompt_tokens INTEGER, completion_tokens INTEGER, timings TEXT, error TEXT,
    user TEXT
);
CREATE TABLE candidates (
    request_id TEXT NOT NULL REFERENCES requests(id), idx INTEGER NOT NULL, text TEXT NOT NULL,
    score REAL, scores TEXT NOT NULL, passed INTEGER NOT NULL, gate_failures TEXT NOT NULL,
    tokens INTEGER NOT NULL, finish_reason TEXT, chosen INTEGER NOT NULL,
    PRIMARY KEY (request_id, idx)
);
CREATE INDEX requests_created ON requests(created);
"""


def _record(rid: str, text: str = "a") -> AuditRecord:
    row = RequestRow(id=rid, created=1.0, key_id=None, model="m", status=200, stream=False,
                     messages=[], answer=text, best=0, strategy="best_of_n", n=1,
                     prompt_tokens=1, completion_tokens=1, timings={})  # fmt: skip
    cand = CandidateOut(text=text, score=1.0, scores={}, passed=True,
                        gate_failures=[], tokens=1, finish_reason="stop", chosen=True)  # fmt: skip
    return AuditRecord(row, [cand])


def _live(db: Path) -> LiveServer:
    policy = parse_policy(textwrap.dedent(POLICY))
    return LiveServer(app_from_policies([policy], ServerOptions(audit_db=db, timeout_s=5)))


@pytest.mark.parametrize("how", ["rmtree", "replace"])
def test_a_removed_or_replaced_database_fails_closed(tmp_path: Path, how: str) -> None:
    folder = tmp_path / "audit"
    db = folder / "audit.db"
    with _live(db) as live:
        url = live.url + "/v1/chat/completions"
        assert httpx.post(url, json=BODY).status_code == 200
        if how == "rmtree":
            shutil.rmtree(folder)
        else:
            fresh = tmp_path / "other.db"
            sqlite3.connect(fresh).execute("CREATE TABLE t (x)").connection.close()
            os.replace(fresh, db)
        for _ in range(2):
            r = httpx.post(url, json=BODY)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "audit_unavailable"
            assert "seven minutes" not in r.text
        with httpx.stream("POST", url, json={**BODY, "stream": True}) as s:
            lines = [line for line in s.iter_lines() if line]
        assert '"audit_unavailable"' in lines[-2] and "seven" not in "".join(lines)
        health = httpx.get(live.url + "/healthz")
        assert health.status_code == 503
        assert "removed" in health.json()["reason"] or "replaced" in health.json()["reason"]


def test_a_full_disk_is_reported_as_a_full_disk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = AuditLog(tmp_path / "a.db")
    # A page budget stands in for a full disk: SQLite answers SQLITE_FULL the same way.
    log._conn.execute("PRAGMA max_page_count = 40")
    big = "x" * 20_000

    async def fill() -> BaseException:
        for i in range(100):
            try:
                await log.write(_record(f"r{i}", big))
            except Exception as exc:
                return exc
        raise AssertionError("the page budget was never reached")

    with caplog.at_level(logging.ERROR, logger="aligntime.server.audit"):
        error = asyncio.run(fill())
    log.close()
    assert "full" in str(error)
    assert "full" in caplog.text and "cannot rollback" not in caplog.text


def test_a_new_database_carries_the_schema_version(tmp_path: Path) -> None:
    AuditLog(tmp_path / "a.db").close()
    version = sqlite3.connect(tmp_path / "a.db").execute("PRAGMA user_version").fetchone()
    assert version == (SCHEMA_VERSION,) and SCHEMA_VERSION >= 1


def test_an_unversioned_database_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript(SCHEMA_V0)
    conn.execute(
        "INSERT INTO requests VALUES ('old', 1.0, NULL, 'm', 200, 0, "
        '\'[{"role": "user", "content": "hi"}]\', \'hello\', 0, 0, 0, \'best_of_n\', 1, '
        "1, 1, '{}', NULL, NULL)"
    )
    conn.commit()
    conn.close()
    # Reading never migrates: the reader works on version 0 as it is.
    assert [r["id"] for r in read_requests(db)] == ["old"]
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone() == (0,)
    log = AuditLog(db)

    async def write() -> None:
        await log.write(_record("new"))

    asyncio.run(write())
    log.close()
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    rows = read_requests(db)
    assert [r["id"] for r in rows] == ["old", "new"]
    assert rows[0]["messages"] == [{"role": "user", "content": "hi"}]


def test_a_newer_or_foreign_database_is_refused(tmp_path: Path) -> None:
    newer = tmp_path / "newer.db"
    AuditLog(newer).close()
    sqlite3.connect(newer).execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ConfigError, match="newer"):
        AuditLog(newer)
    with pytest.raises(ConfigError, match="newer"):
        read_requests(newer)
    foreign = tmp_path / "foreign.db"
    sqlite3.connect(foreign).execute("CREATE TABLE notes (x)").connection.close()
    with pytest.raises(ConfigError, match="not an aligntime audit database"):
        AuditLog(foreign)
    assert (
        sqlite3.connect(foreign)
        .execute("SELECT name FROM sqlite_master WHERE name = 'requests'")
        .fetchone()
        is None
    )


def _aligntime(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aligntime", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_audit_cli_errors_are_one_line_and_exit_2(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    log = AuditLog(db)
    asyncio.run(log.write(_record("r1")))
    log.close()
    before = sorted(os.listdir(tmp_path))
    last = _aligntime("audit", "--db", str(db), "--last", "-1", cwd=tmp_path)
    # A usage error, reported the way click reports every bad option value.
    assert last.returncode == 2, last.stderr
    assert "'--last'" in last.stderr and "Traceback" not in last.stderr
    edit = sqlite3.connect(db)
    edit.execute("UPDATE requests SET messages = 'not json'")
    edit.commit()
    edit.close()
    bad = _aligntime("audit", "--db", str(db), cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: "), bad.stderr
    assert "Traceback" not in bad.stderr
    assert "column messages is not JSON" in bad.stderr and "r1" in bad.stderr
    assert sorted(os.listdir(tmp_path)) == before


def test_audit_reads_a_path_with_uri_characters_and_never_creates_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    weird = tmp_path / "we#ird?.db"
    log = AuditLog(weird)
    asyncio.run(log.write(_record("r1")))
    log.close()
    before = sorted(os.listdir(tmp_path))
    assert [r["id"] for r in read_requests(Path("we#ird?.db"))] == ["r1"]
    out = CliRunner().invoke(cli, ["audit", "--db", "we#ird?.db", "--json"])
    assert out.exit_code == 0 and '"r1"' in out.output
    missing = CliRunner().invoke(cli, ["audit", "--db", "nothing#here.db"])
    assert isinstance(missing.exception, AligntimeError)
    assert sorted(os.listdir(tmp_path)) == before  # no "we", no "nothing", no journal files


def test_read_only_means_read_only(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    log = AuditLog(db)
    asyncio.run(log.write(_record("r1")))
    log.close()
    db.chmod(0o444)
    try:
        assert [r["id"] for r in read_requests(db)] == ["r1"]
    finally:
        db.chmod(0o644)


def test_audit_table_shows_rows_of_an_unexpected_shape(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    log = AuditLog(db)
    asyncio.run(log.write(_record("r1")))
    log.close()
    edit = sqlite3.connect(db)
    edit.execute("""UPDATE requests SET messages = '{"role": "user"}', created = 'soon'""")
    edit.commit()
    edit.close()
    out = CliRunner().invoke(cli, ["audit", "--db", str(db)], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "soon" in out.output and "1 request(s)" in out.output
