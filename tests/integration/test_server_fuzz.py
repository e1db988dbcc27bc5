"""Fuzz the server: its own OpenAPI schema with schemathesis (no input may cause a 5xx),
and arbitrary Unicode in every string field of a chat request (hypothesis)."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aligntime.server import ServerOptions, app_from_policies
from aligntime.server.testing import LiveServer

POLICY = """
name: fuzz
generator: {backend: fake, responses: ["A calm, helpful answer."]}
n: 2
max_n: 4
prompt:
  templates:
    concise: {prompt: "{prompt} (briefly)"}
scorers:
  - {name: safety, kind: classifier, gate: {max: 0.6}}
  - {name: rules, kind: rules}
"""


def test_no_generated_request_gets_a_server_error(tmp_path: Path) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(textwrap.dedent(POLICY))
    app = app_from_policies([path], ServerOptions(max_tokens=64, timeout_s=10))
    app.state.service.load()
    with LiveServer(app) as live:
        schema = schemathesis.openapi.from_url(live.url + "/openapi.json")
        operations = [op.ok() for op in schema.get_all_operations()]
        paths = sorted(op.path for op in operations)
        assert paths == ["/healthz", "/metrics", "/v1/chat/completions", "/v1/models",
                         "/v1/models/{model}"]  # fmt: skip
        session = requests.Session()
        seen: dict[int, int] = {}

        # Valid inputs (per the schema) and invalid ones (schemathesis' negative mode).
        strategy = st.one_of(
            *(op.as_strategy(mode) for op in operations for mode in schemathesis.GenerationMode)
        )

        @settings(
            max_examples=200,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=strategy)
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=live.url, session=session, timeout=15)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code < 500, (case.as_curl_command(), response.text)
            if response.status_code >= 400:
                assert set(response.json()) == {"error"}

        check()
    # The fuzzer reached both the happy path and the validation errors.
    assert seen.get(200, 0) > 0
    assert sum(n for code, n in seen.items() if 400 <= code < 500) > 0, seen


@pytest.mark.parametrize("content", [b"\xff\xfe", b'{"model": "fuzz", "messages": [{"role": '])
def test_broken_bytes_are_400(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(textwrap.dedent(POLICY))
    with LiveServer(app_from_policies([path], ServerOptions())) as live:
        r = requests.post(
            live.url + "/v1/chat/completions",
            data=content,
            headers={"content-type": "application/json"},
            timeout=10,
        )
        assert r.status_code == 400 and "error" in r.json()


# Text a hostile or careless client sends: lone surrogates, NUL and other control
# characters, right-to-left and zero-width marks, a byte-order mark, astral
# characters, ordinary text, and any of these repeated up to 100,000 times.
_ODD = ["\ud800", "\udfff", "\x00", "\x07", "\x1b", "\u202e", "\u200f", "\u200b", "\ufeff",
        "\U0001f600", "\n", "\\", '"', "Human:"]  # fmt: skip
_PIECE = st.one_of(st.sampled_from(_ODD), st.characters(exclude_categories=()))
_TEXT = st.one_of(
    st.lists(_PIECE, max_size=20).map("".join),
    st.builds(
        lambda piece, n: piece * n,
        st.lists(_PIECE, min_size=1, max_size=3).map("".join),
        st.sampled_from([1_000, 30_000, 100_000]),
    ),
)
_ROLE = st.one_of(st.sampled_from(["user", "system", "developer", "assistant"]), _TEXT)
_CONTENT = st.one_of(
    _TEXT, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": _TEXT}), max_size=3)
)
_MESSAGE = st.fixed_dictionaries({"role": _ROLE, "content": _CONTENT}, optional={"name": _TEXT})
_REQUEST = st.fixed_dictionaries(
    {
        "model": st.one_of(st.just("prop"), _TEXT),
        "messages": st.lists(_MESSAGE, min_size=1, max_size=3),
        "stream": st.booleans(),
    },
    optional={
        "user": _TEXT,
        "stop": st.one_of(_TEXT, st.lists(_TEXT, max_size=5)),
        "aligntime": st.fixed_dictionaries(
            {}, optional={"template": _TEXT, "strategy": _TEXT, "return_candidates": st.booleans()}
        ),
    },
)

_FIELDS = ["model", "role", "content", "part", "name", "user", "stop", "stops", "template",
           "strategy"]  # fmt: skip


def _with_field(field: str, value: str, stream: bool) -> dict[str, Any]:
    """A valid request with ``value`` in one string field."""
    system: dict[str, Any] = {"role": "system", "content": "Be brief."}
    user: dict[str, Any] = {"role": "user", "content": "How do I boil an egg?"}
    body: dict[str, Any] = {"model": "prop", "messages": [system, user], "stream": stream}
    if field in ("model", "user"):
        body[field] = value
    elif field == "role":
        system["role"] = value
    elif field == "content":
        user["content"] = value
    elif field == "part":
        user["content"] = [{"type": "text", "text": value}]
    elif field == "name":
        user["name"] = value
    elif field == "stop":
        body["stop"] = value
    elif field == "stops":
        body["stop"] = ["Human:", value]
    else:
        body["aligntime"] = {field: value}
    return body


# Mostly one odd field in an otherwise valid request (so many reach the Aligner and the
# audit log), sometimes odd text everywhere at once.
_ONE_FIELD = st.builds(_with_field, st.sampled_from(_FIELDS), _TEXT, st.booleans())
_BODY = st.one_of(_ONE_FIELD, _ONE_FIELD, _ONE_FIELD, _REQUEST)

PROPERTY_POLICY = """
name: prop
generator: {backend: fake, responses: ["Boil the egg for seven minutes.", "Poach it."]}
n: 2
prompt:
  templates:
    concise: {prompt: "{prompt} (briefly)"}
scorers:
  - {name: rules, kind: rules}
"""


def _acknowledged(response: httpx.Response, stream: bool) -> str | None:
    """The id of an answer the client received in full, or None."""
    if response.status_code != 200:
        return None
    if not stream:
        return str(response.json()["id"])
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]", response.text[-300:]  # a stream always ends properly
    chunks = [json.loads(e) for e in events[:-1]]
    if any("error" in c for c in chunks):
        return None
    assert chunks[-1]["choices"][0]["finish_reason"] is not None
    return str(chunks[0]["id"])


def test_arbitrary_unicode_in_every_field_never_breaks_a_request(tmp_path: Path) -> None:
    """Any text in any string field: a 2xx or a 4xx, never a hang, and every
    acknowledged answer is in the audit database."""
    path = tmp_path / "prop.yaml"
    path.write_text(textwrap.dedent(PROPERTY_POLICY))
    db = tmp_path / "audit.db"
    options = ServerOptions(audit_db=db, timeout_s=10, max_body_bytes=8 << 20)
    app = app_from_policies([path], options)
    acked: list[str] = []
    statuses: dict[int, int] = {}
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=30) as http:

        @settings(
            max_examples=120,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(body=_BODY)
        def check(body: dict[str, Any]) -> None:
            # json.dumps escapes lone surrogates: valid JSON, as a JavaScript client sends.
            r = http.post(
                "/v1/chat/completions",
                content=json.dumps(body),
                headers={"content-type": "application/json"},
            )
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert r.status_code < 500, r.text[:500]
            if r.status_code >= 400:
                assert set(r.json()) == {"error"}
            rid = _acknowledged(r, body["stream"])
            if rid is not None:
                acked.append(rid)

        check()
        assert http.get("/healthz").status_code == 200
    rows = sqlite3.connect(db).execute("SELECT id FROM requests WHERE status = 200")
    stored = {row[0] for row in rows}
    assert acked and not set(acked) - stored
    assert statuses.get(200, 0) > 0 and sum(n for c, n in statuses.items() if c >= 400) > 0
