"""The real server on loopback, driven by the official openai client (fake backend)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from aligntime.server import ServerOptions, app_from_policies
from aligntime.server.protocol import ChatCompletion
from aligntime.server.testing import LiveServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    import textwrap

    from conftest import FAKE_POLICY

    folder = tmp_path_factory.mktemp("server")
    policy = folder / "fake.yaml"
    policy.write_text(textwrap.dedent(FAKE_POLICY))
    second = folder / "second.yaml"
    second.write_text(
        "name: second\ndescription: one fixed answer\n"
        "generator: {backend: fake, responses: ['A fine and polite answer to you.']}\n"
        "n: 2\nscorers:\n  - {name: rules, kind: rules}\n"
    )
    rude = folder / "rude.yaml"
    rude.write_text(
        "name: rude\ngenerator: {backend: fake, responses: ['You stupid idiot, damn you.']}\n"
        "n: 2\nscorers:\n  - {name: safety, kind: classifier, gate: {max: 0.6}}\n"
        "fallback: Sorry, no good answer.\n"
    )
    # Keys off, and every caller may see candidates (gate-failed text stays withheld).
    options = ServerOptions(anonymous_rights=frozenset({"candidates"}))
    app = app_from_policies([policy, second, rude], options)
    app.state.service.load()
    with LiveServer(app) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


FEVER = [{"role": "user", "content": "My child has a fever. What should I do?"}]


def test_plain_completion_returns_the_aligned_answer_and_counts_every_token(
    client: openai.OpenAI,
) -> None:
    res = client.chat.completions.create(
        model="fake-test", messages=FEVER, extra_body={"aligntime": {"return_candidates": True}}
    )
    assert res.object == "chat.completion" and res.model == "fake-test"
    assert len(res.choices) == 1
    assert res.choices[0].message.content.startswith("Keep the child hydrated")
    assert res.choices[0].finish_reason == "stop"
    ext = res.model_extra["aligntime"]  # type: ignore[index]
    assert ext["best"] == 0 and not ext["fallback"] and not ext["fail_closed"]
    cands = ext["candidates"]
    assert len(cands) == ext["candidates_generated"] == 3  # the policy's n
    assert [c["chosen"] for c in cands] == [True, False, False]
    insult = cands[1]
    assert not insult["passed"] and insult["gate_failures"] == ["safety"]
    assert set(insult["scores"]) == {"safety", "rules"}
    assert res.usage is not None
    assert res.usage.completion_tokens == sum(c["tokens"] for c in cands)
    assert res.usage.total_tokens == res.usage.prompt_tokens + res.usage.completion_tokens
    # The JSON the service builds matches the response model the OpenAPI schema documents.
    ChatCompletion.model_validate_json(res.model_dump_json(exclude_unset=True))


def test_n_samples_candidates_and_the_extension_n_wins(client: openai.OpenAI) -> None:
    # best_of samples (OpenAI's n is the number of choices; see test_server_conventions.py)
    res = client.chat.completions.create(
        model="fake-test", messages=FEVER, extra_body={"best_of": 2}
    )
    assert len(res.choices) == 1
    assert res.model_extra["aligntime"]["candidates_generated"] == 2  # type: ignore[index]
    assert "candidates" not in res.model_extra["aligntime"]  # type: ignore[index]
    res = client.chat.completions.create(
        model="fake-test", messages=FEVER, extra_body={"best_of": 2, "aligntime": {"n": 5}}
    )
    assert res.model_extra["aligntime"]["candidates_generated"] == 5  # type: ignore[index]


def test_streaming_sends_role_then_answer_then_finish_and_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="fake-test", messages=FEVER, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Keep the child hydrated, let them rest, and call a doctor if the fever is high."
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "stop"
    assert finals[0].model_extra["aligntime"]["best"] is not None  # type: ignore[index]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0
    assert len({c.id for c in chunks}) == 1


def test_fallback_is_flagged_as_content_filter(client: openai.OpenAI) -> None:
    res = client.chat.completions.create(model="rude", messages=FEVER)
    ext = res.model_extra["aligntime"]  # type: ignore[index]
    assert ext["fallback"] and not ext["fail_closed"] and ext["best"] is None
    assert ext["candidates_generated"] == 2
    assert res.choices[0].message.content == "Sorry, no good answer."
    assert res.choices[0].finish_reason == "content_filter"


def test_per_request_strategy_and_template(client: openai.OpenAI) -> None:
    res = client.chat.completions.create(
        model="fake-test",
        messages=FEVER,
        extra_body={"aligntime": {"strategy": "passthrough", "template": "concise"}},
    )
    ext = res.model_extra["aligntime"]  # type: ignore[index]
    assert ext["strategy"] == "passthrough" and ext["candidates_generated"] == 1


def test_several_policies_and_models_list(client: openai.OpenAI, server: LiveServer) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["fake-test", "rude", "second"]
    res = client.chat.completions.create(model="second", messages=FEVER)
    assert res.choices[0].message.content == "A fine and polite answer to you."
    health = httpx.get(server.url + "/healthz").json()
    assert health == {"status": "ok", "models": ["fake-test", "rude", "second"]}


def test_unknown_model_is_404_listing_the_served_ones(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=FEVER)
    err = info.value.body
    assert isinstance(err, dict)
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert "fake-test, rude, second" in err["message"]


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"messages": FEVER}, "model", "Field required"),
        ({"model": "fake-test", "messages": []}, "messages", "at least 1"),
        ({"model": "fake-test", "messages": [{"role": "user", "content": " "}]}, "messages",
         "no non-empty user message"),
        ({"model": "fake-test", "messages": FEVER, "n": 9}, "n", "at most 8"),
        ({"model": "fake-test", "messages": FEVER, "aligntime": {"n": 0}}, "aligntime.n",
         "greater than or equal to 1"),
        ({"model": "fake-test", "messages": FEVER, "temperature": 3}, "temperature",
         "less than or equal to 2"),
        ({"model": "fake-test", "messages": FEVER, "aligntime": {"bogus": 1}},
         "aligntime.bogus", "Extra inputs"),
        ({"model": "fake-test", "messages": FEVER, "aligntime": {"template": "long"}},
         "aligntime.template", "templates: concise"),
        ({"model": "fake-test", "messages": FEVER, "aligntime": {"strategy": "best_of"}},
         "aligntime.strategy", "did you mean 'best_of_n'"),
        # Tools are served now (issue 12): a malformed one is still a 400 naming it.
        ({"model": "fake-test", "messages": FEVER, "tools": [{"type": "function"}]},
         "tools[0].function", "must be an object"),
        ({"model": "fake-test", "messages": [{"role": "tool", "content": "x"}]},
         "messages", "no non-empty user message"),
        ({"model": "fake-test", "messages": [{"role": "critic", "content": "x"}]},
         "messages.0.role", "Input should be"),
    ],
)  # fmt: skip
def test_bad_requests_are_400_naming_the_field(
    server: LiveServer, body: dict[str, object], param: str, fragment: str
) -> None:
    r = httpx.post(server.url + "/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert fragment in err["message"]


def test_non_json_bodies_and_unknown_routes_answer_in_openai_shape(server: LiveServer) -> None:
    r = httpx.post(
        server.url + "/v1/chat/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = httpx.post(server.url + "/v1/chat/completions", content=b"[1, 2]")
    assert r.status_code == 400 and set(r.json()) == {"error"}
    r = httpx.get(server.url + "/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(server.url + "/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_metrics_count_requests_stages_candidates_gates_and_fallbacks(
    client: openai.OpenAI, server: LiveServer
) -> None:
    client.chat.completions.create(model="fake-test", messages=FEVER, extra_body={"best_of": 3})
    text = httpx.get(server.url + "/metrics").text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    assert samples['aligntime_requests_total{endpoint="/v1/chat/completions",status="200"}'] >= 1
    assert samples['aligntime_candidates_generated_total{policy="fake-test"}'] >= 3
    assert samples['aligntime_gate_failures_total{policy="fake-test",scorer="safety"}'] >= 1
    for stage in ("generate", "score", "align", "total", "overhead"):
        assert samples[f'aligntime_stage_seconds_count{{stage="{stage}"}}'] >= 1
    assert "aligntime_fallbacks_total" in text
    assert 'aligntime_scorer_batch_requests_count{scorer="safety"}' in text


def test_multi_part_content_and_developer_role(client: openai.OpenAI) -> None:
    res = client.chat.completions.create(
        model="second",
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Say hi"}]},
        ],
    )
    assert res.choices[0].message.content
    body = json.loads(res.model_dump_json())
    assert body["aligntime"]["policy"] == "second"


def test_top_p_and_stop_reach_the_generator(client: openai.OpenAI) -> None:
    res = client.chat.completions.create(model="second", messages=FEVER, top_p=0.5, stop=["polite"])
    assert res.choices[0].message.content == "A fine and "
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="second", messages=FEVER, top_p=0.0)


def test_what_is_sent_is_exactly_what_the_response_models_dump(server: LiveServer) -> None:
    """No drift between the OpenAPI schema and the bytes: every body and every stream
    chunk parses as its model, and the model dumps back to the same JSON."""
    from aligntime.server.protocol import ChatCompletionChunk, Health, ModelList

    url = server.url + "/v1/chat/completions"
    asked = {"model": "fake-test", "messages": FEVER, "aligntime": {"return_candidates": True}}
    for body in ({"model": "fake-test", "messages": FEVER}, asked):
        sent = httpx.post(url, json=body, timeout=30).json()
        assert ChatCompletion.model_validate(sent).model_dump() == sent
        assert ("candidates" in sent["aligntime"]) == (body is asked)  # absent, not null
    stream = {**asked, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", url, json=stream, timeout=30) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) >= 4  # role, a piece of the answer, the finish, the usage
    for chunk in chunks:
        assert ChatCompletionChunk.model_validate(chunk).model_dump() == chunk
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "aligntime" in chunks[-2] and "usage" not in chunks[-2]
    assert chunks[-1]["choices"] == [] and "aligntime" not in chunks[-1]
    models = httpx.get(server.url + "/v1/models").json()
    assert ModelList.model_validate(models).model_dump() == models
    health = httpx.get(server.url + "/healthz").json()
    assert Health.model_validate(health).model_dump() == health and "reason" not in health
