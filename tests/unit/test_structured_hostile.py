"""JSON Schemas a hostile or careless client sends in ``response_format`` or ``tools``.

Each of these was a server error (a 500, or the connection reset) found by the
hostile-input property test: a ``$schema`` that is not a string, a ``$ref`` that
does not resolve (or points at a URL, which jsonschema would fetch), a ``$ref``
cycle, a schema nested past Python's recursion limit. Now each is a 400 naming the
field, and a cycle only one answer walks into fails that answer's gate.
"""

from __future__ import annotations

import gc
import sys
import textwrap
import threading
from typing import Any

import httpx
import pytest

from aligntime import structured
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


class _Litter:
    """Garbage in a reference cycle whose finalizer needs a little stack."""

    def __init__(self) -> None:
        self.me = self

    def __del__(self) -> None:
        def deep(n: int) -> int:
            return 0 if n == 0 else 1 + deep(n - 1)

        deep(60)


def _depth() -> int:
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth


def _refused(schema: dict[str, Any]) -> None:
    with pytest.raises(RequestError, match="without end"):
        check_schema(schema, WHERE)


def _answer_fails(schema: dict[str, Any]) -> None:
    # A cycle only the answer walks into: found while the answer is checked.
    found = structured.violations(structured.validator(schema), {"a": 1})
    assert "without end" in found[-1]


LOOP = {"$defs": {"loop": {"$ref": "#/$defs/loop"}}}


@pytest.mark.parametrize(
    ("check", "schema"),
    [
        (_refused, {"$ref": "#"}),
        (_answer_fails, {"properties": {"a": LOOP["$defs"]["loop"]}, **LOOP}),
    ],
)
def test_unrelated_garbage_is_not_collected_at_the_recursion_limit(
    monkeypatch: pytest.MonkeyPatch, check: Any, schema: dict[str, Any]
) -> None:
    # A cycle probe recurses to the limit on purpose. An automatic collection starting
    # there ran other objects' finalizers without stack: a flaky "exception ignored" in
    # CI. Here no collection starts by itself (a huge threshold); one starts near the
    # limit if the collector is enabled there, as an automatic one could.
    from jsonschema.validators import extend, validator_for

    base = validator_for(schema)
    ref = base.VALIDATORS["$ref"]
    deep_calls: list[bool] = []  # one per $ref met near the limit: collector enabled?

    def ref_collecting(validator: Any, value: Any, instance: Any, here: Any) -> Any:
        if _depth() > sys.getrecursionlimit() - 60:
            deep_calls.append(gc.isenabled())
            if gc.isenabled():
                gc.collect()
        yield from ref(validator, value, instance, here)

    deeper = extend(base, {"$ref": ref_collecting})
    monkeypatch.setattr(structured, "validator", lambda s: deeper(s))
    ignored: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: ignored.append(u.exc_value))
    threshold = gc.get_threshold()
    gc.collect()
    gc.set_threshold(10**9)
    try:
        for _ in range(5):
            _Litter()
        check(schema)
    finally:
        gc.set_threshold(*threshold)
    gc.collect()  # the litter goes here, with stack to spare
    assert deep_calls, "the probe never came near the recursion limit"
    assert ignored == []
    assert deep_calls == [False] * len(deep_calls)
    assert gc.isenabled()


def test_overlapping_and_nested_pauses_restore_the_collector_once() -> None:
    inside, leave = threading.Event(), threading.Event()

    def other_thread() -> None:
        with structured._no_cyclic_gc():
            inside.set()
            leave.wait(5)

    worker = threading.Thread(target=other_thread)
    worker.start()
    inside.wait(5)
    seen: list[bool] = []

    def nested() -> None:
        with structured._no_cyclic_gc(), structured._no_cyclic_gc():
            seen.append(gc.isenabled())
        seen.append(gc.isenabled())

    # In a thread of its own, so that a pause that waited on the other one fails here
    # instead of hanging the run.
    mine = threading.Thread(target=nested)
    mine.start()
    mine.join(5)
    assert not mine.is_alive(), "a pause waited for another thread's probe"
    assert seen == [False, False]  # the other thread is still probing
    leave.set()
    worker.join()
    assert gc.isenabled()
    gc.disable()
    try:
        with structured._no_cyclic_gc():
            pass
        assert not gc.isenabled()  # a collector the caller had paused stays paused
    finally:
        gc.enable()
