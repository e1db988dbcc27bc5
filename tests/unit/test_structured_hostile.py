"""JSON Schemas a hostile or careless client sends in ``response_format`` or ``tools``.

Each of these was a server error (a 500, or the connection reset) found by the
hostile-input property test: a ``$schema`` that is not a string, a ``$ref`` that
does not resolve (or points at a URL, which jsonschema would fetch), a ``$ref``
cycle, a schema nested past Python's recursion limit. Now each is a 400 naming the
field, and a cycle only one answer walks into fails that answer's gate.
"""

from __future__ import annotations

import textwrap
from typing import Any

import httpx
import pytest

from aligntime.policy.loader import parse_policy
from aligntime.request import RequestError
from aligntime.server import ServerOptions, app_from_policies
from aligntime.server.testing import LiveServer
from aligntime.structured import ResponseFormat, check_schema
from aligntime.tools import ToolSet

WHERE = "response_format.json_schema.schema"


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


@pytest.mark.parametrize(
    ("schema", "field", "fragment"),
    [
        ({"$schema": []}, f"{WHERE}.$schema", "must be a string, got an array"),
        ({"$schema": 5}, f"{WHERE}.$schema", "must be a string, got a number"),
        ({"$ref": "#/nope"}, WHERE, "$ref that does not resolve within the schema: '#/nope'"),
        ({"properties": {"a": {"$ref": "http://127.0.0.1:9/x"}}}, WHERE, "does not resolve"),
        ({"$dynamicRef": "#meta"}, WHERE, "$dynamicRef that does not resolve"),
        ({"$schema": "http://json-schema.org/draft-04/schema#", "$ref": 5}, WHERE, "not a string"),
        ({"$ref": "#"}, WHERE, "refers to itself without end"),
        ({"allOf": [{"$ref": "#/$defs/a"}], "$defs": {"a": {"$ref": "#"}}}, WHERE, "without end"),
        (_nested(400), WHERE, "nested too deeply"),
    ],
)
def test_a_schema_that_cannot_be_applied_is_refused_naming_the_field(
    schema: dict[str, Any], field: str, fragment: str
) -> None:
    with pytest.raises(RequestError) as info:
        ResponseFormat.parse({"type": "json_schema", "json_schema": {"schema": schema}})
    assert info.value.field == field
    assert fragment in info.value.message


def test_tool_parameters_are_held_to_the_same_rules() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"$ref": "#/nope"}}}
    with pytest.raises(RequestError) as info:
        ToolSet.parse([tool])
    assert info.value.field == "tools[0].function.parameters"


def test_references_within_the_schema_and_to_the_meta_schemas_still_work() -> None:
    tree = {
        "$defs": {"node": {"type": "object", "properties": {"child": {"$ref": "#/$defs/node"}}}},
        "$ref": "#/$defs/node",
    }
    check_schema(tree, WHERE)
    check_schema({"$ref": "https://json-schema.org/draft/2020-12/schema"}, WHERE)
    check_schema({"$anchor": "x", "properties": {"a": {"$ref": "#x"}}}, WHERE)
    shape = ResponseFormat.parse({"type": "json_schema", "json_schema": {"schema": tree}})
    assert shape is not None
    assert shape.failures('{"child": {"child": {}}}') == ()
    assert shape.failures('{"child": 3}')


def test_a_cycle_only_an_answer_walks_into_fails_that_answer() -> None:
    # The probe values at parse time do not reach property "a"; this answer does.
    schema = {"type": "object", "properties": {"a": {"$ref": "#/properties/a"}}}
    shape = ResponseFormat.parse({"type": "json_schema", "json_schema": {"schema": schema}})
    assert shape is not None
    assert shape.failures("{}") == ()
    assert any("without end" in f for f in shape.failures('{"a": 1}'))


POLICY = """
name: p
generator: {backend: fake, responses: ['{"a": 1}']}
n: 1
scorers:
  - {name: rules, kind: rules}
"""


def test_the_server_answers_them_with_a_400_or_a_gated_answer() -> None:
    policy = parse_policy(textwrap.dedent(POLICY))
    ask = [{"role": "user", "content": "Give me JSON."}]
    bad = [
        {"response_format": {"type": "json_schema", "json_schema": {"schema": {"$schema": []}}}},
        {"response_format": {"type": "json_schema", "json_schema": {"schema": {"$ref": "#/x"}}}},
        {"response_format": {"type": "json_schema", "json_schema": {"schema": {"$ref": "#"}}}},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"$ref": "#"}}}]},
    ]
    looping = {"type": "object", "properties": {"a": {"$ref": "#/properties/a"}}}
    with LiveServer(app_from_policies([policy], ServerOptions())) as live:
        url = live.url + "/v1/chat/completions"
        for extra in bad:
            for stream in (False, True):
                body = {"model": "p", "messages": ask, "stream": stream, **extra}
                r = httpx.post(url, json=body, timeout=30)
                assert r.status_code == 400, (extra, r.text)
                field = r.json()["error"]["param"].split(".")[0]
                assert field in ("response_format", "tools[0]"), r.text
        shaped = {"type": "json_schema", "json_schema": {"schema": looping}}
        body = {"model": "p", "messages": ask, "response_format": shaped}
        r = httpx.post(url, json=body, timeout=30)
        assert r.status_code == 200, r.text
        # The only candidate walks into the cycle: it fails the gate, the fallback answers.
        assert r.json()["choices"][0]["message"]["content"] != '{"a": 1}'
