"""Structured output and tools over loopback, driven by the ``openai`` package.

``client.beta.chat.completions.parse`` with a pydantic model, tool calls (and a
conversation that carries their results back), and the 400s that name the field.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from pydantic import BaseModel

from aligntime.aligner import Aligner
from aligntime.generators.base import Capabilities
from aligntime.generators.fake import FakeGenerator
from aligntime.policy.schema import Policy
from aligntime.server import ServerOptions, app_from_policies
from aligntime.server.audit import read_requests
from aligntime.server.errors import ApiError
from aligntime.server.planning import Served, plan
from aligntime.server.protocol import ChatCompletionRequest
from aligntime.server.testing import LiveServer

PROSE = "Ada Lovelace was 36 and wrote the first program."
CALL = json.dumps({"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]})
POLICY = f"""
name: shaped
generator:
  backend: fake
  responses:
    - {json.dumps(PROSE)}
    - '{{"name": "Ada", "age": "36"}}'
    - '{{"name": "Ada", "age": 36}}'
    - {json.dumps(CALL)}
n: 4
max_n: 8
scorers:
  - {{name: rules, kind: rules}}
"""
SEARCH = """
name: search
generator: {backend: fake, responses: ["one two three"]}
n: 2
strategy: {kind: early_rejection}
scorers:
  - {name: rules, kind: rules}
"""
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
ASK = [{"role": "user", "content": "Tell me about Ada."}]


class Person(BaseModel):
    name: str
    age: int


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("shaped")
    (folder / "shaped.yaml").write_text(textwrap.dedent(POLICY))
    (folder / "search.yaml").write_text(textwrap.dedent(SEARCH))
    app = app_from_policies([folder / "shaped.yaml", folder / "search.yaml"], ServerOptions())
    with LiveServer(app) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


def test_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    done = client.beta.chat.completions.parse(model="shaped", messages=ASK, response_format=Person)
    assert done.choices[0].message.parsed == Person(name="Ada", age=36)
    ext = done.model_extra["aligntime"] if done.model_extra else {}
    assert ext["candidates_generated"] == 4


def test_json_object_answer_is_a_json_object(server: LiveServer) -> None:
    body = {"model": "shaped", "messages": ASK, "response_format": {"type": "json_object"}}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    assert isinstance(json.loads(r.json()["choices"][0]["message"]["content"]), dict)


def test_a_backend_that_cannot_constrain_gets_400_naming_the_field() -> None:
    class Plain(FakeGenerator):
        capabilities = Capabilities(n_sampling=True)

    policy = Policy.model_validate(
        {
            "name": "plain",
            "generator": {"backend": "fake"},
            "scorers": [{"name": "r", "kind": "rules"}],
        }
    )
    with Aligner(policy, generator=Plain()) as al:
        for field, value in (("response_format", {"type": "json_object"}), ("tools", [WEATHER])):
            req = ChatCompletionRequest.model_validate(
                {"model": "plain", "messages": ASK, field: value}
            )
            with pytest.raises(ApiError) as info:
                plan(req, {"plain": Served.of(al, 0)}, ServerOptions())
            assert info.value.status == 400 and info.value.param == field
            assert "not supported by the 'fake' backend" in info.value.message


def test_tools_round_trip(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model="shaped", messages=ASK, tools=[WEATHER], tool_choice="required"
    )
    choice = done.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Oslo"}
    # The tool's result goes back in a tool message; the next answer may be text.
    follow = client.chat.completions.create(
        model="shaped",
        messages=[
            *ASK,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
        ],
        tools=[WEATHER],
    )
    assert follow.choices[0].finish_reason in ("stop", "tool_calls")


def test_streamed_tool_calls(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="shaped", messages=ASK, tools=[WEATHER], tool_choice="required", stream=True
    )
    calls, finish = [], None
    for chunk in stream:
        for choice in chunk.choices:
            calls += choice.delta.tool_calls or []
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert [c.function.name for c in calls if c.function] == ["get_weather"]


@pytest.mark.parametrize(
    ("extra", "param", "fragment"),
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "p",
          "schema": {"type": "nope"}}}}, "response_format.json_schema.schema", "JSON Schema"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
         "tool_choice.function.name", "not one of the tools"),
        ({"model": "search", "response_format": {"type": "json_object"}}, "response_format",
         "early_rejection"),
        ({"tools": [WEATHER], "stream": True, "aligntime": {"stream_mode": "early"}}, "tools",
         "stream_mode"),
    ],
)  # fmt: skip
def test_shapes_that_cannot_be_served_are_400_naming_the_field(
    server: LiveServer, extra: dict[str, object], param: str, fragment: str
) -> None:
    body = {"model": "shaped", "messages": ASK, **extra}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param
    assert fragment in err["message"]


def test_langchain_structured_output_and_tools(server: LiveServer) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="shaped", base_url=server.url + "/v1", api_key="none", max_retries=0)
    person = llm.with_structured_output(Person).invoke("Tell me about Ada.")
    assert person == Person(name="Ada", age=36)
    message = llm.bind_tools([WEATHER], tool_choice="required").invoke("Weather in Oslo?")
    assert [c["name"] for c in message.tool_calls] == ["get_weather"]
    assert message.tool_calls[0]["args"] == {"city": "Oslo"}


def _remote(body: dict[str, object]) -> dict[str, object]:
    """A remote engine that honours the fields: JSON under response_format, a call under
    tools; it checks that they arrived as OpenAI spells them."""
    if body.get("tools"):
        assert body["tool_choice"] == "required"
        message: dict[str, object] = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_remote",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        }
        finish = "tool_calls"
    else:
        assert body["response_format"]["type"] == "json_schema"  # type: ignore[index]
        message, finish = {"role": "assistant", "content": '{"name": "Bo", "age": 7}'}, "stop"
    n = int(body.get("n", 1))  # type: ignore[call-overload]
    choices = [{"index": i, "message": message, "finish_reason": finish} for i in range(n)]
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": choices}


def test_the_openai_backend_passes_the_fields_on(tmp_path: Path) -> None:
    from openai_stub_server import StubServer

    stub = StubServer(forward=_remote).start()
    try:
        policy = tmp_path / "remote.yaml"
        policy.write_text(
            "name: remote\n"
            f"generator: {{backend: openai, base_url: '{stub.base_url}', model: m}}\n"
            "n: 2\nscorers:\n  - {name: rules, kind: rules}\n"
        )
        with LiveServer(app_from_policies([policy], ServerOptions())) as live:
            client = openai.OpenAI(base_url=live.url + "/v1", api_key="none", max_retries=0)
            done = client.beta.chat.completions.parse(
                model="remote", messages=ASK, response_format=Person
            )
            assert done.choices[0].message.parsed == Person(name="Bo", age=7)
            called = client.chat.completions.create(
                model="remote", messages=ASK, tools=[WEATHER], tool_choice="required"
            )
            assert called.choices[0].finish_reason == "tool_calls"
            (call,) = called.choices[0].message.tool_calls or []
            assert (call.id, call.function.name) == ("call_remote", "get_weather")
    finally:
        stub.stop()


def test_no_answer_of_the_shape_is_the_fallback_with_content_filter(server: LiveServer) -> None:
    body = {
        "model": "search",  # its one answer is prose; best_of_n samples whole answers
        "messages": ASK,
        "response_format": {"type": "json_object"},
        "aligntime": {"strategy": "best_of_n"},
    }
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["choices"][0]["finish_reason"] == "content_filter"
    assert done["aligntime"]["fallback"] is True and done["aligntime"]["best"] is None
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.ContentFilterFinishReasonError):
        client.beta.chat.completions.parse(
            model="search",
            messages=ASK,
            response_format=Person,
            extra_body={"aligntime": {"strategy": "best_of_n"}},
        )


def test_a_tool_call_answer_is_audited_with_its_arguments(tmp_path: Path) -> None:
    (tmp_path / "shaped.yaml").write_text(textwrap.dedent(POLICY))
    db = tmp_path / "audit.db"
    options = ServerOptions(audit_db=db, anonymous_rights={"candidates"})
    app = app_from_policies([tmp_path / "shaped.yaml"], options)
    with LiveServer(app) as live:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="none")
        done = client.chat.completions.create(
            model="shaped",
            messages=ASK,
            tools=[WEATHER],
            tool_choice="required",
            extra_body={"aligntime": {"return_candidates": True}},
        )
    assert done.choices[0].finish_reason == "tool_calls"
    shown = done.model_extra["aligntime"]["candidates"]  # type: ignore[index]
    calling = [c for c in shown if c.get("tool_calls")]
    assert calling and all(c["origin"] == "sampled" for c in shown)
    assert json.loads(calling[0]["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo"}
    (row,) = read_requests(db)
    chosen = next(c for c in row["candidates"] if c["chosen"])
    (call,) = chosen["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert chosen["origin"] == "sampled"
