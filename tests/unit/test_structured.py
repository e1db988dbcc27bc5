"""response_format and tools: reading OpenAI's shapes, the implicit gates, the wire bodies."""

from __future__ import annotations

import json
from typing import Any

import pytest

from aligntime.aligner import Aligner
from aligntime.generators import openai_chat as chat
from aligntime.generators.options import Sampling
from aligntime.policy.schema import Policy
from aligntime.request import AlignRequest, RequestError
from aligntime.scorers.combine import combine
from aligntime.structured import ResponseFormat
from aligntime.tools import ToolSet
from aligntime.types import Candidate, GenerationParams, Message, ToolCall

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
WEATHER = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def test_response_format_reads_openai_shapes() -> None:
    assert ResponseFormat.parse({"type": "text"}) is None
    obj = ResponseFormat.parse({"type": "json_object"})
    assert (
        obj is not None and obj.kind == "json_object" and obj.to_openai() == {"type": "json_object"}
    )
    fmt = ResponseFormat.parse(SCHEMA)
    assert fmt is not None and fmt.kind == "json_schema" and fmt.name == "person"
    assert fmt.to_openai() == {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": PERSON},
    }


@pytest.mark.parametrize(
    ("value", "field", "fragment"),
    [
        ("json", "response_format", "must be an object"),
        ({"type": "xml"}, "response_format.type", "'xml'"),
        ({"type": "json_schema"}, "response_format.json_schema", "must be an object"),
        ({"type": "json_schema", "json_schema": {"name": "a b", "schema": {}}},
         "response_format.json_schema.name", "letters, digits"),
        ({"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": 5}}},
         "response_format.json_schema.schema", "not a valid JSON Schema"),
    ],
)  # fmt: skip
def test_response_format_errors_name_the_field(value: Any, field: str, fragment: str) -> None:
    with pytest.raises(RequestError) as info:
        ResponseFormat.parse(value)
    assert info.value.field == field
    assert fragment in info.value.message


def test_response_format_failures() -> None:
    obj = ResponseFormat.parse({"type": "json_object"})
    fmt = ResponseFormat.parse(SCHEMA)
    assert obj is not None and fmt is not None
    assert obj.failures('{"a": 1}') == ()
    assert obj.failures(" [1, 2] ") == ("not a JSON object but an array",)
    assert obj.failures('{"a": NaN}')[0].startswith("invalid JSON")
    assert fmt.failures('{"name": "Ada", "age": 36}') == ()
    (why,) = fmt.failures('{"name": "Ada", "age": "old"}')
    assert why.startswith("age:") and "integer" in why
    assert fmt.failures('{"name": "Ada"')[0].startswith("invalid JSON")


def test_tools_read_and_check_calls() -> None:
    tools = ToolSet.parse(WEATHER)
    assert tools is not None and tools.mode == "auto"
    assert tools.failures([ToolCall("get_weather", '{"city": "Paris"}')]) == ()
    assert tools.failures([]) == ()  # auto: text is an answer too
    assert "not one of the tools" in tools.failures([ToolCall("rm_rf", "{}")])[0]
    assert "not JSON" in tools.failures([ToolCall("get_weather", "{city: Paris")])[0]
    assert "'city' is a required property" in tools.failures([ToolCall("get_weather", "{}")])[0]
    required = ToolSet.parse(WEATHER, "required")
    assert required is not None and required.failures([]) != ()
    none = ToolSet.parse(WEATHER, "none")
    assert none is not None and none.failures([ToolCall("get_weather", '{"city": "x"}')]) != ()
    named = ToolSet.parse(WEATHER, {"type": "function", "function": {"name": "get_weather"}})
    assert named is not None and named.function == "get_weather" and named.failures([]) != ()
    assert named.to_openai()["tool_choice"] == {
        "type": "function",
        "function": {"name": "get_weather"},
    }


@pytest.mark.parametrize(
    ("tools", "choice", "field"),
    [
        ([{"type": "function"}], None, "tools[0].function"),
        ([{"type": "function", "function": {"name": "a b"}}], None, "tools[0].function.name"),
        ([{"type": "function", "function": {"name": "f", "parameters": {"type": 1}}}], None,
         "tools[0].function.parameters"),
        (WEATHER + WEATHER, None, "tools[1].function.name"),
        (WEATHER, "sometimes", "tool_choice"),
        (WEATHER, {"type": "function", "function": {"name": "other"}},
         "tool_choice.function.name"),
        (None, "required", "tool_choice"),
    ],
)  # fmt: skip
def test_tool_errors_name_the_field(tools: Any, choice: Any, field: str) -> None:
    with pytest.raises(RequestError) as info:
        ToolSet.parse(tools, choice)
    assert info.value.field == field


def test_combine_gates_on_the_shape() -> None:
    fmt = ResponseFormat.parse(SCHEMA)
    tools = ToolSet.parse(WEATHER)
    params = GenerationParams(response_format=fmt, tools=tools)
    cands = [
        Candidate('{"name": "Ada", "age": 36}'),
        Candidate('{"name": "Ada", "age": 36'),  # cut short
        Candidate('{"name": "Ada", "age": "x"}'),
        Candidate("", tool_calls=(ToolCall("get_weather", '{"city": "Oslo"}'),)),
        Candidate("", tool_calls=(ToolCall("get_weather", '{"town": "Oslo"}'),)),
        Candidate('{"name": "Ada"', state="partial"),  # not judged before it is whole
    ]
    out = combine(cands, {}, [], params=params)
    assert [c.passed for c in out] == [True, False, False, True, False, True]
    assert out[1].gate_failures[0].startswith("response_format (invalid JSON")
    assert out[2].gate_failures == ("response_format (age: 'x' is not of type 'integer')",)
    assert out[4].gate_failures[0].startswith("tools (get_weather:")
    # Without params nothing changes, and calls without tools offered fail the tool gate.
    assert combine(cands[:1], {}, [])[0].passed
    stray = combine(cands[3:4], {}, [], params=GenerationParams())[0]
    assert stray.gate_failures == ("tools (the request offered no tools)",)


def test_bodies_carry_the_shape_and_replies_carry_calls() -> None:
    params = GenerationParams(
        response_format=ResponseFormat.parse({"type": "json_object"}),
        tools=ToolSet.parse(WEATHER, "auto"),
    )
    messages = [
        Message("user", "weather?"),
        Message("assistant", "", (ToolCall("get_weather", '{"city": "Rome"}', "c1"),)),
        Message("tool", "sunny", tool_call_id="c1"),
    ]
    body = chat.chat_body(messages, Sampling(16, 0.7, 1.0, None, ()), logprobs=False, params=params)
    assert body["response_format"] == {"type": "json_object"}
    assert body["tools"] == WEATHER and body["tool_choice"] == "auto"
    assert body["messages"][1]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert body["messages"][2] == {"role": "tool", "content": "sunny", "tool_call_id": "c1"}
    # A continuation is not held to the whole answer's shape.
    assert "tools" not in chat.continuation_body(body, "So", 0)
    reply = {
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "x",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": {"city": "Rome"}},
                        }
                    ],
                },
            },
            {"index": 1, "finish_reason": "stop", "message": {"content": '{"a": 1}'}},
        ]
    }
    (call, text), _ = chat.collect([reply])
    assert call.text == "" and call.finish_reason == "tool_calls"
    assert call.tool_calls == (ToolCall("get_weather", '{"city": "Rome"}', "x"),)
    assert text.text == '{"a": 1}' and text.tool_calls == ()


def test_candidate_records_keep_tool_calls() -> None:
    plain = Candidate("hi")
    assert "tool_calls" not in plain.to_record()  # records without calls are unchanged
    calling = Candidate("", tool_calls=(ToolCall("f", "{}", "c9"),))
    back = Candidate.from_record(json.loads(json.dumps(calling.to_record())))
    assert back.tool_calls == calling.tool_calls


def _aligner(responses: list[str], n: int = 3) -> Aligner:
    policy = Policy.model_validate(
        {
            "name": "shape",
            "generator": {"backend": "fake", "responses": responses},
            "n": n,
            "scorers": [{"name": "rules", "kind": "rules"}],
        }
    )
    return Aligner(policy)


def test_aligner_chooses_only_answers_of_the_requested_shape() -> None:
    # The rules scorer would prefer the prose; the schema gate rules it out.
    answers = ["Ada Lovelace, aged 36, a fine mathematician.", '{"name": "Ada", "age": "36"}',
               '{"name": "Ada", "age": 36}']  # fmt: skip
    with _aligner(answers) as al:
        result = al.align_request(
            AlignRequest([Message("user", "a person as JSON")], response_format=SCHEMA)
        )
        assert result.text == '{"name": "Ada", "age": 36}'
        assert [c.passed for c in result.candidates] == [False, False, True]
        with pytest.raises(RequestError) as info:
            al.align_request(AlignRequest([Message("user", "x")], response_format={"type": "yaml"}))
        assert info.value.field == "response_format.type"


def test_aligner_returns_tool_calls() -> None:
    call = json.dumps({"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]})
    bad = json.dumps({"tool_calls": [{"name": "get_weather", "arguments": {}}]})
    with _aligner([bad, call, "It is probably cold."]) as al:
        result = al.align_request(
            AlignRequest(
                [Message("user", "weather in Oslo?")], tools=WEATHER, tool_choice="required"
            )
        )
        chosen = result.chosen
        assert chosen is not None and chosen.tool_calls[0].name == "get_weather"
        assert [c.passed for c in result.candidates] == [False, True, False]


def test_guard_reads_a_tool_result_on_the_users_side() -> None:
    from aligntime.scorers.guard.formats.base import guard_turns

    messages = [
        Message("user", "weather?"),
        Message("assistant", "", (ToolCall("get_weather", '{"city": "Rome"}', "c1"),)),
        Message("tool", "sunny", tool_call_id="c1"),
    ]
    turns = guard_turns(messages, "It is sunny.")
    assert [(t.role, t.content) for t in turns] == [
        ("user", "weather?"),
        ("assistant", ""),
        ("user", "sunny"),
        ("assistant", "It is sunny."),
    ]


def test_scorers_read_an_answer_that_calls_tools_as_its_calls() -> None:
    from collections.abc import Sequence
    from typing import ClassVar

    from aligntime.scorers.base import Scorer

    class Seen(Scorer):
        name = "seen"
        texts: ClassVar[list[str]] = []

        async def score(
            self, messages: Sequence[Message], candidates: Sequence[Candidate]
        ) -> list[float]:
            self.texts.extend(c.text for c in candidates)
            return [0.5] * len(candidates)

    call = json.dumps({"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]})
    policy = Policy.model_validate(
        {"name": "seen", "generator": {"backend": "fake", "responses": [call]}, "n": 1,
         "scorers": [{"name": "seen", "kind": "rules"}]}
    )  # fmt: skip
    with Aligner(policy, scorers=[Seen()]) as al:
        result = al.align_request(AlignRequest([Message("user", "Oslo?")], tools=WEATHER))
    assert Seen.texts == ['get_weather({"city": "Oslo"})']
    chosen = result.chosen
    assert chosen is not None and chosen.text == "" and chosen.tool_calls  # the answer itself
