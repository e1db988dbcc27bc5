"""One bad string must not stop the server (issue 18, item 1).

A lone UTF-16 surrogate is valid JSON (``"\\ud800"``) but not text that UTF-8,
SQLite, a tokenizer or llama.cpp can take. In a request it is refused with a
400 that names the field; in a backend's reply it is replaced, so the answer is
stored and sent. Whatever fails in the audit writer settles every waiting
request with an error, ``/healthz`` says so, and ``--timeout`` bounds the wait.
"""

from __future__ import annotations

import json
import sqlite3
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from aligntime.aligner import Aligner, build
from aligntime.generators.base import Capabilities, Generator
from aligntime.policy.loader import parse_policy
from aligntime.server import ServerOptions, app_from_policies, create_app
from aligntime.server.metering import MeteredGenerator
from aligntime.server.metrics import Metrics
from aligntime.server.service import AlignmentService
from aligntime.server.testing import LiveServer
from aligntime.types import Generation, GenerationParams, Message
from openai_stub_server import StubServer

POLICY = """
name: p
generator: {backend: fake, responses: ["Boil the egg for seven minutes."]}
n: 2
scorers:
  - {name: rules, kind: rules}
"""
URL = "/v1/chat/completions"


def _post(live: LiveServer, body: dict[str, Any], timeout: float = 10) -> httpx.Response:
    # json.dumps escapes a lone surrogate as \ud800: valid JSON, as a client would send it.
    return httpx.post(
        live.url + URL,
        content=json.dumps(body),
        headers={"content-type": "application/json"},
        timeout=timeout,
    )


def _events(live: LiveServer, body: dict[str, Any]) -> list[str]:
    with httpx.stream(
        "POST",
        live.url + URL,
        content=json.dumps({**body, "stream": True}),
        headers={"content-type": "application/json"},
        timeout=10,
    ) as s:
        return [line for line in s.iter_lines() if line]


def _user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


BAD_FIELDS = [
    ({"user": "u\ud800"}, "user"),
    ({"messages": _user("boil \ud800 an egg")}, "messages.0.content"),
    (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "x\udc00"}]}]},
        "messages.0.content.0.text",
    ),
    ({"messages": [{"role": "user", "content": "hi", "name": "\udfff"}]}, "messages.0.name"),
    ({"stop": ["ok", "\ud83d"]}, "stop.1"),
    ({"model": "p\ud800"}, "model"),
    ({"aligntime": {"template": "\ud800"}}, "aligntime.template"),
]


@pytest.mark.parametrize("audit", [True, False])
def test_lone_surrogates_in_a_request_are_a_400_and_later_requests_are_served(
    tmp_path: Path, audit: bool
) -> None:
    db = tmp_path / "audit.db"
    options = ServerOptions(audit_db=db if audit else None, timeout_s=5)
    app = app_from_policies([parse_policy(textwrap.dedent(POLICY))], options)
    good = {"model": "p", "messages": _user("How do I boil an egg?")}
    with LiveServer(app) as live:
        for extra, field in BAD_FIELDS:
            body = {**good, **extra}
            r = _post(live, body)
            assert r.status_code == 400, (field, r.text)
            error = r.json()["error"]
            assert error["param"] == field and "surrogate" in error["message"]
            assert field in error["message"]
            s = _post(live, {**body, "stream": True})
            assert s.status_code == 400 and s.json()["error"]["param"] == field
        started = time.monotonic()
        ok = _post(live, {**good, "user": "u1"})
        assert ok.status_code == 200 and time.monotonic() - started < 3
        lines = _events(live, good)
        assert lines[-1] == "data: [DONE]"
        assert "seven minutes" in "".join(lines)
        assert httpx.get(live.url + "/healthz").status_code == 200
    if audit:
        conn = sqlite3.connect(db)
        rows = dict(conn.execute("SELECT id, status FROM requests"))
        assert rows[ok.json()["id"]] == 200
        # Refusals the service answered are audited too, the bad text made storable.
        stored = conn.execute("SELECT user FROM requests WHERE status = 400 AND user IS NOT NULL")
        assert stored.fetchall() == [("u\ufffd",)]


def test_a_lone_surrogate_in_a_backend_reply_is_replaced_stored_and_answered(
    tmp_path: Path,
) -> None:
    stub = StubServer(text=lambda body, i: f"Boil it \ud800 well, choice {i}.").start()
    try:
        policy = parse_policy(
            textwrap.dedent(
                f"""
                name: p
                generator: {{backend: openai, base_url: "{stub.base_url}", model: m,
                             api_key_env: null, max_retries: 0}}
                n: 2
                scorers:
                  - {{name: rules, kind: rules}}
                """
            )
        )
        for db in (tmp_path / "audit.db", None):
            app = app_from_policies([policy], ServerOptions(audit_db=db, timeout_s=5))
            with LiveServer(app) as live:
                r = _post(live, {"model": "p", "messages": _user("How do I boil an egg?")})
                assert r.status_code == 200, r.text
                answer = r.json()["choices"][0]["message"]["content"]
                assert answer.startswith("Boil it \ufffd well")
                lines = _events(live, {"model": "p", "messages": _user("And a duck egg?")})
                assert lines[-1] == "data: [DONE]" and "\\ufffd" not in lines[-2]
                assert "\ufffd well" in "".join(lines)
            if db is not None:
                stored = sqlite3.connect(db).execute(
                    "SELECT answer FROM requests WHERE id = ?", (r.json()["id"],)
                )
                assert stored.fetchone() == (answer,)
    finally:
        stub.stop()


def test_a_failing_audit_writer_settles_every_request_and_health_reports_it(
    tmp_path: Path,
) -> None:
    """Any failure in the writer (not only an SQLite error) answers the waiting
    requests with a 503; /healthz is 503 until a write succeeds again."""
    app = app_from_policies(
        [parse_policy(textwrap.dedent(POLICY))],
        ServerOptions(audit_db=tmp_path / "audit.db", timeout_s=5),
    )
    audit = app.state.service.audit
    real_commit = audit._commit
    broken = threading.Event()

    def commit(records: list[Any]) -> None:
        if broken.is_set():
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        real_commit(records)

    audit._commit = commit
    good = {"model": "p", "messages": _user("How do I boil an egg?")}
    with LiveServer(app) as live:
        assert _post(live, good).status_code == 200
        broken.set()
        for _ in range(3):  # the writer is still alive after each failure
            started = time.monotonic()
            r = _post(live, good)
            assert r.status_code == 503 and time.monotonic() - started < 3
            assert r.json()["error"]["code"] == "audit_unavailable"
            lines = _events(live, good)
            assert '"audit_unavailable"' in lines[-2] and lines[-1] == "data: [DONE]"
        health = httpx.get(live.url + "/healthz")
        assert health.status_code == 503
        assert health.json()["status"] == "unhealthy" and "audit" in health.json()["reason"]
        broken.clear()  # the fault goes away: the next probe finds the log writable
        deadline = time.monotonic() + 5
        while httpx.get(live.url + "/healthz").status_code != 200:
            assert time.monotonic() < deadline, "health did not recover"
            time.sleep(0.1)
        assert _post(live, good).status_code == 200


def test_the_timeout_bounds_the_audit_wait(tmp_path: Path) -> None:
    app = app_from_policies(
        [parse_policy(textwrap.dedent(POLICY))],
        ServerOptions(audit_db=tmp_path / "audit.db", timeout_s=0.5),
    )
    audit = app.state.service.audit
    real_commit = audit._commit

    def stalled(records: list[Any]) -> None:
        time.sleep(3)  # a disk that stopped answering
        real_commit(records)

    audit._commit = stalled
    with LiveServer(app) as live:
        started = time.monotonic()
        r = _post(live, {"model": "p", "messages": _user("How do I boil an egg?")})
        assert time.monotonic() - started < 2
        assert r.status_code == 503 and r.json()["error"]["code"] == "audit_unavailable"
        assert "0.5 s" in r.json()["error"]["message"]


class Exploding(Generator):
    """A backend with a bug: raises something that is not a BackendError."""

    name = "exploding"
    capabilities = Capabilities(n_sampling=True)

    async def generate(
        self, messages: Sequence[Message], n: int, params: GenerationParams
    ) -> Generation:
        raise ValueError("a bug in a backend")


def test_an_unexpected_error_mid_stream_ends_with_an_error_event_and_done() -> None:
    policy = parse_policy(textwrap.dedent(POLICY))
    scorers = [build("scorer", s.kind, s.options(), name=s.name) for s in policy.scorers]
    aligner = Aligner(policy, generator=MeteredGenerator(Exploding()), scorers=scorers)
    service = AlignmentService([aligner], ServerOptions(), Metrics())
    with LiveServer(create_app(service)) as live:
        body = {"model": "p", "messages": _user("How do I boil an egg?")}
        r = _post(live, body)
        assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
        lines = _events(live, body)
        assert '"internal_error"' in lines[-2] and lines[-1] == "data: [DONE]"
        assert "a bug in a backend" not in "".join(lines)  # no internals leak
