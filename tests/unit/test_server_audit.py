"""The audit log: rows per request and candidate, committed before the answer; the CLI."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import textwrap
from pathlib import Path

import httpx
import openai
import pytest
from typer.testing import CliRunner

from aligntime.cli.main import app as cli
from aligntime.server import ServerOptions, app_from_policies
from aligntime.server.audit import AuditLog, AuditRecord, RequestRow, read_requests
from aligntime.server.protocol import CandidateOut
from aligntime.server.testing import LiveServer

POLICY = """
name: audited
generator:
  backend: fake
  responses: ["Boil the egg for seven minutes.", "You idiot, damn it."]
n: 2
scorers:
  - {name: safety, kind: classifier, gate: {max: 0.6}}
  - {name: rules, kind: rules}
"""


def test_every_request_and_candidate_is_audited(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(textwrap.dedent(POLICY))
    db = tmp_path / "audit.db"
    app = app_from_policies([policy], ServerOptions(audit_db=db, api_keys=frozenset({"k"})))
    with LiveServer(app) as live:
        c = openai.OpenAI(base_url=live.url + "/v1", api_key="k", max_retries=0)
        msgs = [{"role": "user", "content": "How do I boil an egg?"}]
        plain = c.chat.completions.create(model="audited", messages=msgs, user="u1")
        # The row is committed before the answer is sent: visible to a second reader now.
        conn = sqlite3.connect(db)
        count = conn.execute("SELECT count(*) FROM requests WHERE id = ?", (plain.id,))
        assert count.fetchone() == (1,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        chunks = list(c.chat.completions.create(model="audited", messages=msgs, stream=True))
        bad = httpx.post(
            live.url + "/v1/chat/completions",
            json={"model": "audited", "messages": msgs, "aligntime": {"template": "x"}},
            headers={"Authorization": "Bearer k"},
        )
        assert bad.status_code == 400
    rows = read_requests(db)
    assert [r["id"] for r in rows[:2]] == [plain.id, chunks[0].id]
    first = rows[0]
    assert first["status"] == 200 and first["model"] == "audited" and first["user"] == "u1"
    assert first["messages"] == msgs
    assert first["answer"] == plain.choices[0].message.content
    assert first["key_id"] and first["key_id"] != "k"  # a hash, never the key
    assert len(first["candidates"]) == 2
    chosen = [cand for cand in first["candidates"] if cand["chosen"]]
    assert len(chosen) == 1 and chosen[0]["text"] == first["answer"]
    assert set(chosen[0]["scores"]) == {"safety", "rules"}
    assert any(cand["gate_failures"] == ["safety"] for cand in first["candidates"])
    assert rows[1]["stream"] is True
    assert rows[2]["status"] == 400 and "template" in rows[2]["error"]
    assert rows[2]["candidates"] == []

    runner = CliRunner()
    out = runner.invoke(cli, ["audit", "--db", str(db), "--last", "2", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert [r["id"] for r in data["requests"]] == [rows[1]["id"], rows[2]["id"]]
    table = runner.invoke(cli, ["audit", "--db", str(db)], env={"COLUMNS": "200"})
    assert table.exit_code == 0 and "3 request(s)" in table.output
    assert "How do I boil an egg?" in table.output


def test_audit_writer_batches_concurrent_commits(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.db")

    def record(i: int) -> AuditRecord:
        rid = f"r{i}"
        row = RequestRow(id=rid, created=float(i), key_id=None, model="m", status=200,
                         stream=False, messages=[], answer="a", best=0, strategy="best_of_n",
                         n=1, prompt_tokens=1, completion_tokens=1, timings={})  # fmt: skip
        cand = CandidateOut(text="a", score=1.0, scores={}, passed=True, gate_failures=[],
                            tokens=1, finish_reason="stop", chosen=True)  # fmt: skip
        return AuditRecord(row, [cand])

    async def main() -> None:
        await asyncio.gather(*(log.write(record(i)) for i in range(200)))

    asyncio.run(main())
    log.close()
    rows = read_requests(tmp_path / "a.db", last=5)
    assert [r["id"] for r in rows] == ["r195", "r196", "r197", "r198", "r199"]
    assert len(read_requests(tmp_path / "a.db")) == 200


def test_rows_are_inserted_by_column_name_not_position(tmp_path: Path) -> None:
    """A table whose columns stand in another order (a database rebuilt by hand, a
    future migration) still gets every value in its own column."""
    db = tmp_path / "shuffled.db"
    conn = sqlite3.connect(db)
    conn.executescript(
        """
        CREATE TABLE requests (user TEXT, error TEXT, input_json TEXT, input_action TEXT,
            timings TEXT, completion_tokens INTEGER, prompt_tokens INTEGER, n INTEGER,
            strategy TEXT, fail_closed INTEGER NOT NULL, fallback INTEGER NOT NULL,
            best INTEGER, answer TEXT, messages TEXT NOT NULL, stream INTEGER NOT NULL,
            status INTEGER NOT NULL, model TEXT NOT NULL, key_id TEXT,
            created REAL NOT NULL, id TEXT PRIMARY KEY);
        CREATE TABLE candidates (chosen INTEGER NOT NULL, finish_reason TEXT,
            tokens INTEGER NOT NULL, gate_failures TEXT NOT NULL, passed INTEGER NOT NULL,
            scores TEXT NOT NULL, score REAL, text TEXT NOT NULL, idx INTEGER NOT NULL,
            request_id TEXT NOT NULL, PRIMARY KEY (request_id, idx));
        CREATE TABLE health (id INTEGER PRIMARY KEY CHECK (id = 1), checked REAL NOT NULL);
        PRAGMA user_version = 2;
        """
    )
    conn.close()
    row = RequestRow(id="r1", created=5.0, key_id="k", model="m", status=200, stream=True,
                     messages=[{"role": "user", "content": "hi"}], answer="hello", best=1,
                     strategy="vote", n=2, prompt_tokens=3, completion_tokens=7,
                     timings={"total_s": 0.5}, error="judge", user="u")  # fmt: skip
    cands = [
        CandidateOut(text=t, score=s, scores={"judge": None}, passed=i == 1,
                     gate_failures=[] if i else ["safety"], tokens=i + 1, finish_reason="stop",
                     chosen=i == 1)
        for i, (t, s) in enumerate([("no", 0.1), ("hello", 0.9)])
    ]  # fmt: skip
    verdict = {"action": "pass", "scores": {}, "decided_by": None, "harm": None, "failed": [],
               "seconds": 0.0, "labels": []}  # fmt: skip
    log = AuditLog(db)
    try:
        asyncio.run(log.write(AuditRecord(row, cands, verdict)))
    finally:
        log.close()
    (got,) = read_requests(db)
    assert {k: got[k] for k in ("id", "created", "key_id", "model", "status", "stream")} == {
        "id": "r1", "created": 5.0, "key_id": "k", "model": "m", "status": 200, "stream": True
    }  # fmt: skip
    assert got["messages"] == [{"role": "user", "content": "hi"}] and got["answer"] == "hello"
    assert (got["best"], got["strategy"], got["n"], got["error"], got["user"]) == (
        1, "vote", 2, "judge", "u"
    )  # fmt: skip
    assert (got["prompt_tokens"], got["completion_tokens"]) == (3, 7)
    assert got["timings"] == {"total_s": 0.5} and got["input"] == verdict
    placed = [
        (c["idx"], c["text"], c["score"], c["passed"], c["chosen"]) for c in got["candidates"]
    ]
    assert placed == [(0, "no", 0.1, False, False), (1, "hello", 0.9, True, True)]
    assert got["candidates"][0]["gate_failures"] == ["safety"]
    assert got["candidates"][0]["scores"] == {"judge": None}
    assert [c["tokens"] for c in got["candidates"]] == [1, 2]


def test_audit_cli_names_a_missing_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aligntime.cli.main import main

    missing = tmp_path / "none.db"
    with pytest.raises(SystemExit) as info:
        main(["audit", "--db", str(missing)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: audit database {missing} does not exist")
    assert "hint: check --db" in err and "Traceback" not in err
    assert not missing.exists()  # reading never creates an empty database


def test_an_answer_that_cannot_be_audited_is_withheld(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(textwrap.dedent(POLICY))
    app = app_from_policies([policy], ServerOptions(audit_db=tmp_path / "audit.db"))
    audit = app.state.service.audit
    audit._conn.close()  # the database is gone from under the writer
    with LiveServer(app) as live:
        r = httpx.post(
            live.url + "/v1/chat/completions",
            json={"model": "audited", "messages": [{"role": "user", "content": "Hi there"}]},
        )
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "audit_unavailable"
        assert "Boil" not in r.text
