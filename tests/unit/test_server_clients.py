"""The clients people drive ``aligntime serve`` with, against a live server on loopback:
the ``openai`` package, LiteLLM and langchain-openai (pinned in the dev extra).

Each sends ``n=2`` as OpenAI clients do and must get two choices back, streams, and
sees a key's rights (the fake backend; the real engines have their own tests).
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from aligntime.server import ServerOptions, app_from_policies
from aligntime.server.config import ApiKey
from aligntime.server.testing import LiveServer

POLICY = """
name: clients
description: fake backend for client tests
generator:
  backend: fake
  responses:
    - "Keep the child hydrated and call a doctor if the fever is high."
    - "You idiot, figure it out yourself, damn it."
    - "Rest, fluids, and a doctor if it lasts."
n: 3
scorers:
  - {name: safety, kind: classifier, weight: 0.5, gate: {max: 0.6}}
  - {name: rules, kind: rules}
"""
KEY, CANDIDATES = "sk-client", "sk-client-cand"
GOOD = {
    "Keep the child hydrated and call a doctor if the fever is high.",
    "Rest, fluids, and a doctor if it lasts.",
}
ASK = [{"role": "user", "content": "My child has a fever. What should I do?"}]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("clients")
    (folder / "clients.yaml").write_text(textwrap.dedent(POLICY))
    options = ServerOptions(
        api_keys=frozenset({KEY}),
        keys=(ApiKey(name="cand", secret=CANDIDATES, rights=frozenset({"candidates"})),),
    )
    app = app_from_policies([folder / "clients.yaml"], options)
    app.state.service.load()
    with LiveServer(app) as server:
        yield server


def _openai(live: LiveServer, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key=key, max_retries=0, timeout=30)


def test_openai_package_n_choices_models_retrieve_and_request_id(live: LiveServer) -> None:
    client = _openai(live)
    raw = client.chat.completions.with_raw_response.create(model="clients", messages=ASK, n=2)  # type: ignore[arg-type]
    res = raw.parse()
    assert [c.index for c in res.choices] == [0, 1]
    assert {c.message.content for c in res.choices} == GOOD
    assert raw.headers["x-request-id"] == res.id  # what the audit row is keyed by
    model = client.models.retrieve("clients")
    assert (model.id, model.object, model.owned_by) == ("clients", "model", "aligntime")
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-4o")
    assert info.value.code == "model_not_found"
    stream = client.chat.completions.create(model="clients", messages=ASK, n=2, stream=True)  # type: ignore[arg-type]
    texts: dict[int, str] = {}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    assert set(texts.values()) == GOOD


def test_openai_package_sees_the_rights_of_its_key(live: LiveServer) -> None:
    ask: dict[str, Any] = {"aligntime": {"return_candidates": True}}
    with pytest.raises(openai.PermissionDeniedError) as info:
        _openai(live).chat.completions.create(model="clients", messages=ASK, extra_body=ask)  # type: ignore[arg-type]
    assert "aligntime.return_candidates" in str(info.value)
    res = _openai(live, CANDIDATES).chat.completions.create(
        model="clients",
        messages=ASK,  # type: ignore[arg-type]
        extra_body=ask,
    )
    cands = res.model_extra["aligntime"]["candidates"]  # type: ignore[index]
    assert [c["redacted"] for c in cands] == [False, True, False]
    assert cands[1]["text"] is None and cands[1]["scores"]["safety"] > 0.6


@pytest.fixture(scope="module")
def litellm() -> Any:
    # The packaged price list, not a download at import (there is no network in CI).
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.telemetry = False
    return litellm


@pytest.mark.slow  # importing LiteLLM alone takes seconds
def test_litellm_gets_n_choices_and_streams(live: LiveServer, litellm: Any) -> None:
    common = {"model": "openai/clients", "api_base": live.url + "/v1", "api_key": KEY}
    res = litellm.completion(messages=ASK, n=2, **common)
    assert {c.message.content for c in res.choices} == GOOD
    assert res.usage.completion_tokens > 0
    chunks = list(litellm.completion(messages=ASK, stream=True, **common))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text in GOOD


@pytest.mark.slow  # importing LiteLLM alone takes seconds
def test_litellm_surfaces_a_refused_right_as_a_permission_error(
    live: LiveServer, litellm: Any
) -> None:
    # LiteLLM maps no 403 of its own; it keeps the status and the server's message.
    with pytest.raises(litellm.exceptions.APIError) as info:
        litellm.completion(
            model="openai/clients",
            api_base=live.url + "/v1",
            api_key=KEY,
            messages=ASK,
            extra_body={"aligntime": {"return_candidates": True}},
            num_retries=0,
        )
    assert info.value.status_code == 403 and "aligntime.return_candidates" in str(info.value)


def test_langchain_openai_generates_n_choices_and_streams(live: LiveServer) -> None:
    from langchain_core.messages import HumanMessage
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(
        model="clients", base_url=live.url + "/v1", api_key=KEY, n=2, max_retries=0, timeout=30
    )  # type: ignore[call-arg]
    result = chat.generate([[HumanMessage(ASK[0]["content"])]])
    assert {g.text for g in result.generations[0]} == GOOD
    single = ChatOpenAI(
        model="clients", base_url=live.url + "/v1", api_key=KEY, max_retries=0, timeout=30
    )  # type: ignore[call-arg]
    answer = single.invoke(ASK[0]["content"])
    assert answer.content in GOOD
    assert answer.response_metadata["finish_reason"] == "stop"
    streamed = "".join(str(part.content) for part in single.stream(ASK[0]["content"]))
    assert streamed == answer.content


@pytest.mark.slow  # a server process of its own
def test_a_live_subprocess_server_answers_the_openai_package(tmp_path: Path) -> None:
    """``aligntime serve`` itself (its flags, not the in-process app): keys with rights."""
    from aligntime.server.testing import serve_subprocess

    policy = tmp_path / "clients.yaml"
    policy.write_text(textwrap.dedent(POLICY))
    args = ["--policy", str(policy), "--api-key", f"c:{CANDIDATES}:candidates", "--keepalive", "1"]
    proc, url = serve_subprocess(args)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key=CANDIDATES, max_retries=0)
        res = client.chat.completions.create(
            model="clients",
            messages=ASK,  # type: ignore[arg-type]
            n=2,
            extra_body={"aligntime": {"return_candidates": True}},
        )
        assert len(res.choices) == 2
        assert res.model_extra["aligntime"]["candidates"][1]["redacted"]  # type: ignore[index]
        assert client.models.retrieve("clients").id == "clients"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
