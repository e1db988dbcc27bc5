"""The input gate over HTTP: the ``aligntime.input`` extension, the audit log's verdict
columns (and their migration), the input-action metric, and refusals that sample nothing."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import openai
import pytest
from typer.testing import CliRunner

from aligntime.aligner import Aligner, build
from aligntime.cli.main import app as cli
from aligntime.errors import ConfigError
from aligntime.generators.fake import FakeGenerator
from aligntime.policy.loader import load_policy, parse_policy
from aligntime.scorers.base import Scorer
from aligntime.server import ServerOptions, app_from_policies, create_app
from aligntime.server.audit import (
    SCHEMA_VERSION,
    AuditLog,
    AuditRecord,
    RequestRow,
    read_requests,
)
from aligntime.server.metering import MeteredGenerator
from aligntime.server.metrics import Metrics
from aligntime.server.protocol import ChatCompletion
from aligntime.server.service import AlignmentService
from aligntime.server.testing import LiveServer
from aligntime.types import Candidate, Message

REFUSAL = "I won't continue this conversation."
GATED = f"""
name: gated
generator: {{backend: fake, responses: ["Rest, fluids, and a doctor if it lasts."]}}
n: 2
scorers:
  - {{name: rules, kind: rules}}
  - {{name: fit, kind: appropriate_refusal}}
input:
  scorers:
    - {{name: tox, kind: classifier, harm: true, refuse: 0.6}}
  refusal: "{REFUSAL}"
"""
PLAIN = """
name: plain
generator: {backend: fake, responses: ["Rest and fluids."]}
n: 1
scorers:
  - {name: rules, kind: rules}
"""
RUDE = [{"role": "user", "content": "You stupid idiot, damn you."}]
FEVER = [{"role": "user", "content": "What helps a fever?"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Path]]:
    folder = tmp_path_factory.mktemp("gate")
    db = folder / "audit.db"
    policies = [parse_policy(GATED), parse_policy(PLAIN)]
    options = ServerOptions(audit_db=db, anonymous_rights=frozenset({"candidates"}))
    app = app_from_policies(policies, options)
    app.state.service.load()
    with LiveServer(app) as live:
        yield live, db
    app.state.service.close()


@pytest.fixture
def live(served: tuple[LiveServer, Path]) -> LiveServer:
    return served[0]


def _client(live: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0)


def _generator_calls(live: LiveServer, model: str = "gated") -> int:
    generator = live.app.state.service.served[model].aligner.generator
    assert isinstance(generator, MeteredGenerator) and isinstance(generator.inner, FakeGenerator)
    return generator.inner.calls


def _counter(live: LiveServer, name: str, **labels: str) -> float:
    """One sample of a Prometheus counter from /metrics (0 when it has not been counted)."""
    text = httpx.get(live.url + "/metrics").text
    inside = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    found = re.search(rf"^{name}_total\{{{re.escape(inside)}\}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_a_refused_request_samples_nothing_and_says_why(live: LiveServer) -> None:
    calls = _generator_calls(live)
    refused = _counter(live, "aligntime_input_actions", policy="gated", action="refuse")
    res = _client(live).chat.completions.create(model="gated", messages=RUDE)  # type: ignore[arg-type]
    assert res.choices[0].message.content == REFUSAL
    assert res.choices[0].finish_reason == "content_filter"
    assert res.usage is not None
    assert (res.usage.prompt_tokens, res.usage.completion_tokens, res.usage.total_tokens) == (
        0,
        0,
        0,
    )
    ext = res.model_extra["aligntime"]  # type: ignore[index]
    verdict = ext["input"]
    assert verdict["action"] == "refuse" and verdict["decided_by"] == "tox"
    assert verdict["harm"] >= 0.6 and verdict["scores"] == {"tox": verdict["harm"]}
    assert verdict["failed"] == [] and verdict["seconds"] >= 0
    assert ext["candidates_generated"] == 0 and ext["best"] is None
    assert ext["fallback"] and not ext["fail_closed"] and ext["scorer_errors"] == []
    assert _generator_calls(live) == calls  # the generator was never asked
    ChatCompletion.model_validate_json(res.model_dump_json(exclude_unset=True))
    after = _counter(live, "aligntime_input_actions", policy="gated", action="refuse")
    assert after == refused + 1
    assert _counter(live, "aligntime_fallbacks", policy="gated", reason="input_refused") >= 1


def test_a_refused_stream_carries_the_verdict_and_zero_completion_tokens(
    live: LiveServer,
) -> None:
    calls = _generator_calls(live)
    body = {
        "model": "gated",
        "messages": RUDE,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", live.url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == REFUSAL
    final = next(c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"])
    assert final["choices"][0]["finish_reason"] == "content_filter"
    verdict = final["aligntime"]["input"]
    assert verdict["action"] == "refuse" and verdict["decided_by"] == "tox"
    assert chunks[-1]["usage"]["completion_tokens"] == 0
    assert _generator_calls(live) == calls


def test_a_passed_request_is_sampled_and_scorers_read_the_harm_estimate(
    live: LiveServer,
) -> None:
    passed = _counter(live, "aligntime_input_actions", policy="gated", action="pass")
    res = _client(live).chat.completions.create(
        model="gated",
        messages=FEVER,  # type: ignore[arg-type]
        extra_body={"aligntime": {"return_candidates": True}},
    )
    assert res.choices[0].finish_reason == "stop"
    assert res.choices[0].message.content == "Rest, fluids, and a doctor if it lasts."
    ext = res.model_extra["aligntime"]  # type: ignore[index]
    verdict = ext["input"]
    assert verdict["action"] == "pass" and verdict["decided_by"] is None
    harm = verdict["harm"]
    assert 0.0 <= harm < 0.6
    # appropriate_refusal gets the verdict through the server's batching wrapper:
    # a compliant answer to a benign request scores 1 - harm, not the no-verdict 0.5.
    fits = [c["scores"]["fit"] for c in ext["candidates"]]
    assert fits == [pytest.approx(1.0 - harm)] * 2
    assert res.usage is not None and res.usage.completion_tokens > 0
    after = _counter(live, "aligntime_input_actions", policy="gated", action="pass")
    assert after == passed + 1


def test_a_policy_without_an_input_gate_has_a_null_verdict(live: LiveServer) -> None:
    res = _client(live).chat.completions.create(model="plain", messages=RUDE)  # type: ignore[arg-type]
    assert res.model_extra["aligntime"]["input"] is None  # type: ignore[index]
    assert res.choices[0].finish_reason == "stop"


def test_the_audit_log_records_the_verdict(served: tuple[LiveServer, Path]) -> None:
    live, db = served
    client = _client(live)
    refused = client.chat.completions.create(model="gated", messages=RUDE)  # type: ignore[arg-type]
    passed = client.chat.completions.create(model="gated", messages=FEVER)  # type: ignore[arg-type]
    plain = client.chat.completions.create(model="plain", messages=FEVER)  # type: ignore[arg-type]
    rows = {r["id"]: r for r in read_requests(db)}
    row = rows[refused.id]
    assert row["input"] == refused.model_extra["aligntime"]["input"]  # type: ignore[index]
    assert row["answer"] == REFUSAL and row["candidates"] == [] and row["completion_tokens"] == 0
    assert "input_json" not in row and "input_action" not in row
    assert rows[passed.id]["input"]["action"] == "pass"
    assert rows[plain.id]["input"] is None
    # The action is a column of its own, for SQL filters.
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        actions = dict(conn.execute("SELECT id, input_action FROM requests").fetchall())
    assert (actions[refused.id], actions[passed.id], actions[plain.id]) == ("refuse", "pass", None)

    out = CliRunner().invoke(cli, ["audit", "--db", str(db), "--json"])
    assert out.exit_code == 0, out.output
    listed = {r["id"]: r for r in json.loads(out.output)["requests"]}
    assert listed[refused.id]["input"]["decided_by"] == "tox"
    table = CliRunner().invoke(cli, ["audit", "--db", str(db)], env={"COLUMNS": "250"})
    assert table.exit_code == 0, table.output
    assert re.search(r"refuse \(tox [01]\.\d\d\)", table.output), table.output


# --- an input scorer that fails --------------------------------------------------------


class Broken(Scorer):
    """An input scorer whose model is unreachable."""

    direction = "lower"

    def __init__(self, name: str) -> None:
        self.name = name

    async def score(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        raise RuntimeError("the guard model is unreachable")


@pytest.mark.parametrize("on_error", ["raise", "degrade"])
def test_a_failing_input_scorer_refuses_without_sampling(on_error: str) -> None:
    policy = parse_policy(GATED + f"on_scorer_error: {on_error}\n")
    generator = MeteredGenerator(build("generator", "fake", policy.generator.options()))
    aligner = Aligner(policy, generator=generator, input_scorers=[Broken("tox")])
    service = AlignmentService([aligner], ServerOptions(), Metrics())
    with LiveServer(create_app(service)) as live:
        res = _client(live).chat.completions.create(model="gated", messages=FEVER)  # type: ignore[arg-type]
        assert res.choices[0].message.content == REFUSAL
        assert res.choices[0].finish_reason == "content_filter"
        ext = res.model_extra["aligntime"]  # type: ignore[index]
        assert ext["fail_closed"] and ext["scorer_errors"] == ["tox"]
        verdict = ext["input"]
        assert verdict["action"] == "refuse" and verdict["failed"] == ["tox"]
        assert verdict["scores"] == {"tox": None} and verdict["decided_by"] == "tox"
        assert res.usage is not None and res.usage.completion_tokens == 0
        assert _generator_calls(live) == 0
        assert _counter(live, "aligntime_input_actions", policy="gated", action="refuse") == 1
        assert _counter(live, "aligntime_fallbacks", policy="gated", reason="fail_closed") == 1
    service.close()


# --- the audit schema -------------------------------------------------------------------

# The audit schema at version 1 (aligntime before the input gate's verdict was recorded).
SCHEMA_V1 = """
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
CREATE TABLE health (id INTEGER PRIMARY KEY CHECK (id = 1), checked REAL NOT NULL);
PRAGMA user_version = 1;
"""
_ROW = ("[]", "a", 0, 0, 0, "best_of_n", 1, 1, 1, "{}", None, None)


def test_a_version_1_database_is_read_as_it_is_and_migrated_on_write(tmp_path: Path) -> None:
    db = tmp_path / "v1.db"
    conn = sqlite3.connect(db)
    conn.executescript(SCHEMA_V1)
    conn.execute("INSERT INTO requests VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                 ("old", 1.0, None, "m", 200, 0, *_ROW))  # fmt: skip
    conn.commit()
    conn.close()
    before = sorted(p.name for p in tmp_path.iterdir())
    rows = read_requests(db)
    assert [(r["id"], r["input"]) for r in rows] == [("old", None)]
    # Reading never migrates and creates no file.
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone() == (1,)
    assert sorted(p.name for p in tmp_path.iterdir()) == before

    log = AuditLog(db)
    verdict = {"action": "refuse", "scores": {"tox": 0.9}, "decided_by": "tox", "harm": 0.9,
               "failed": [], "seconds": 0.01}  # fmt: skip
    row = RequestRow(id="new", created=2.0, key_id=None, model="m", status=200, stream=False,
                     messages=[], answer="a", best=0, strategy="best_of_n", n=1,
                     prompt_tokens=1, completion_tokens=1, timings={})  # fmt: skip
    asyncio.run(log.write(AuditRecord(row, [], verdict)))
    log.close()
    assert SCHEMA_VERSION >= 2
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    rows = read_requests(db)
    assert [(r["id"], r["input"]) for r in rows] == [("old", None), ("new", verdict)]


# --- policy sampling options ------------------------------------------------------------


def test_an_empty_stop_string_in_a_policy_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aligntime.cli.main import main

    path = tmp_path / "stop.yaml"
    path.write_text(
        "name: s\ngenerator: {backend: fake, responses: ['a'], stop: ['</s>', '']}\n"
        "scorers: [{name: rules, kind: rules}]\n"
    )
    with pytest.raises(ConfigError, match=r"generator\.stop\[1\]: String should have at least 1"):
        load_policy(path)
    with pytest.raises(SystemExit) as info:
        main(["run", "hi", "--policy", str(path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}:2: generator.stop[1]: String should have at least 1")
    assert "Traceback" not in err
