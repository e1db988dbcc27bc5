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

# The shape a client asks for (tools, response_format) and the extension's stream_mode:
# valid values, and what a careless one sends instead (any JSON value in place of an
# object or a list, unknown tool types, a schema that is not an object or cannot be
# applied, unknown stream modes).
_JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=8),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
# Schemas that are fine, and ones that cannot be applied (a wrong type, a $schema that
# is not a string, a $ref cycle, a $ref that does not resolve or points at a URL).
_SCHEMAS = [_CITY, {"type": "object"}, {"type": "objekt"}, {"$ref": "#"}, {"$ref": "#/nope"},
            {"allOf": [{"$ref": "#"}]}, {"$schema": []}, {"$dynamicRef": "#meta"},
            {"properties": {"a": {"$ref": "http://127.0.0.1:9/x"}}}]  # fmt: skip
_SCHEMA = st.one_of(st.sampled_from(_SCHEMAS), st.sampled_from(_SCHEMAS), _JSON)
_NAME = st.one_of(st.just("get_weather"), st.sampled_from(["", "a b", "x" * 65]), _TEXT, _JSON)
# Mostly a well-named function, so that its parameters are read too.
_GOOD_NAME = st.one_of(st.just("get_weather"), _NAME)
_FUNCTION = st.one_of(
    st.fixed_dictionaries(
        {"name": _GOOD_NAME, "parameters": _SCHEMA}, optional={"description": _JSON}
    ),
    st.fixed_dictionaries({"name": _GOOD_NAME}),
    _JSON,
)
_TOOL_TYPE = st.one_of(
    st.sampled_from(["function", "retrieval", "code_interpreter", "file_search"]), _TEXT, _JSON
)
_TOOL = st.one_of(
    st.fixed_dictionaries({"type": st.just("function"), "function": _FUNCTION}),
    st.fixed_dictionaries({"type": _TOOL_TYPE}, optional={"function": _FUNCTION}),
    _JSON,
)
_TOOLS = st.one_of(st.lists(_TOOL, max_size=3), st.lists(_TOOL, min_size=1, max_size=3), _JSON)
_TOOL_CHOICE = st.one_of(
    st.sampled_from(["none", "auto", "required"]),
    st.fixed_dictionaries(
        {"type": st.just("function"), "function": st.fixed_dictionaries({"name": _NAME})}
    ),
    _JSON,
)
_JSON_SCHEMA = st.one_of(
    st.fixed_dictionaries({"schema": _SCHEMA}, optional={"name": _GOOD_NAME, "strict": _JSON}),
    _JSON,  # not an object, mostly
)
_RESPONSE_FORMAT = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object"])}),
    st.fixed_dictionaries({"type": st.just("json_schema"), "json_schema": _JSON_SCHEMA}),
    st.fixed_dictionaries({"type": st.just("json_schema"), "json_schema": _JSON_SCHEMA}),
    st.fixed_dictionaries({"type": st.one_of(_TEXT, _JSON)}),
    _JSON,
)
_STREAM_MODE = st.one_of(st.sampled_from(["whole", "early"]), _TEXT, _JSON)
_SHAPE = st.fixed_dictionaries(
    {},
    optional={
        "tools": _TOOLS,
        "tool_choice": _TOOL_CHOICE,
        "response_format": _RESPONSE_FORMAT,
        "aligntime": st.fixed_dictionaries({"stream_mode": _STREAM_MODE}),
    },
)
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
            {},
            optional={
                "template": _TEXT,
                "strategy": _TEXT,
                "return_candidates": st.booleans(),
                "stream_mode": _STREAM_MODE,
            },
        ),
        "tools": _TOOLS,
        "tool_choice": _TOOL_CHOICE,
        "response_format": _RESPONSE_FORMAT,
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


def _with_shape(shape: dict[str, Any], stream: bool) -> dict[str, Any]:
    """A valid request asking for ``shape`` (tools, response_format, stream_mode)."""
    user = {"role": "user", "content": "How do I boil an egg?"}
    return {"model": "prop", "messages": [user], "stream": stream, **shape}


# Mostly one odd field in an otherwise valid request (so many reach the Aligner and the
# audit log), or an odd shape asked of a valid one, sometimes odd text everywhere at once.
_ONE_FIELD = st.builds(_with_field, st.sampled_from(_FIELDS), _TEXT, st.booleans())
# A well-formed shape around one of the schemas: it reaches the schema's own checks.
_SCHEMA_SHAPE = st.one_of(
    st.builds(
        lambda schema: {
            "response_format": {"type": "json_schema", "json_schema": {"schema": schema}}
        },
        st.sampled_from(_SCHEMAS),
    ),
    st.builds(
        lambda schema: {
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "parameters": schema}}
            ]
        },
        st.sampled_from(_SCHEMAS),
    ),
)
_ONE_SHAPE = st.one_of(
    *(
        st.builds(_with_shape, shape, st.booleans())
        for shape in (
            st.fixed_dictionaries({"tools": _TOOLS}, optional={"tool_choice": _TOOL_CHOICE}),
            st.fixed_dictionaries({"response_format": _RESPONSE_FORMAT}),
            st.fixed_dictionaries(
                {"aligntime": st.fixed_dictionaries({"stream_mode": _STREAM_MODE})}
            ),
            _SHAPE,
        )
    )
)
_BODY = st.one_of(
    _ONE_FIELD,
    _ONE_FIELD,
    _ONE_FIELD,
    _ONE_SHAPE,
    st.builds(_with_shape, _SCHEMA_SHAPE, st.booleans()),
    _REQUEST,
)

PROPERTY_POLICY = """
name: prop
generator:
  backend: fake
  # Two answers a response_format or tools can apply to: JSON, and a call of get_weather.
  responses: ["Boil the egg for seven minutes.", "Poach it.", '{"city": "Oslo"}',
              '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}']
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
