"""Continuing partial answers on the openai backend (search over HTTP), against the
loopback stub server behaving as vLLM, llama.cpp's server or a strict hosted API."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aligntime import Aligner
from aligntime.errors import BackendError
from aligntime.generators.openai import OpenAIGenerator, OpenAIOptions
from aligntime.server.metering import MeteredGenerator
from aligntime.types import Generation, GenerationParams, Message
from openai_stub_server import StubServer

SEA = [Message("user", "Describe the sea.")]
FULL = "The sea is calm today and the small waves are blue ."


@pytest.fixture(autouse=True)
def _no_ambient_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


@pytest.fixture
def server() -> Iterator[StubServer]:
    srv = StubServer(full_answer=FULL).start()
    yield srv
    srv.stop()


def make(server: StubServer, **options: Any) -> OpenAIGenerator:
    defaults: dict[str, Any] = {"max_retries": 1, "backoff_s": 0.001, "timeout_s": 5.0}
    opts = OpenAIOptions(base_url=server.base_url, model="stub", **{**defaults, **options})
    return OpenAIGenerator(opts)


def extend(gen: OpenAIGenerator, prefixes: list[str], step: int, **params: Any) -> Generation:
    return asyncio.run(gen.extend(SEA, prefixes, step, GenerationParams(**params)))


def test_vllm_style_continuation_returns_only_the_new_text(server: StubServer) -> None:
    gen = make(server)
    assert gen.capabilities.token_steps  # possible until the server refuses
    out = extend(gen, ["The sea is", "The sea is calm today and the small"], 3, seed=7)
    assert [c.text for c in out.candidates] == [" calm today and", " waves are blue"]
    assert [c.finish_reason for c in out.candidates] == ["length", "length"]
    assert [c.tokens for c in out.candidates] == [3, 3]
    assert out.usage.completion_tokens == 6
    bodies = [r.body for r in server.chat_requests()]
    assert all(b["continue_final_message"] is True for b in bodies)
    assert all(b["add_generation_prompt"] is False for b in bodies)
    assert all(b["messages"][-1]["role"] == "assistant" and b["n"] == 1 for b in bodies)
    assert sorted(b["seed"] for b in bodies) == [7, 8]  # partial answer i: seed + i
    last = extend(gen, ["The sea is calm today and the small waves are"], 5)
    assert last.candidates[0].text == " blue ." and last.candidates[0].finish_reason == "stop"
    assert gen.capabilities.token_steps


def test_llamacpp_style_prefill_echo_is_stripped(server: StubServer) -> None:
    server.continuation = "prefill"
    for mode in ("prefill", "auto"):  # llama.cpp ignores the fields auto sends
        gen = make(server, continuation=mode)
        out = extend(gen, ["The sea is calm"], 2)
        assert out.candidates[0].text == " today and"
        sent = server.chat_requests()[-1].body
        assert ("continue_final_message" in sent) == (mode == "auto")


def test_auto_learns_that_a_server_cannot_continue(server: StubServer) -> None:
    server.continuation = "strict"
    gen = make(server)
    with pytest.raises(BackendError, match="does not continue partial answers") as info:
        extend(gen, ["The sea", "The sea is"], 2)
    assert "continuation to prefill" in (info.value.hint or "")
    assert len(server.chat_requests()) == 1  # the first alone probes
    # Remembered for the server and model, by every generator on them.
    assert not gen.capabilities.token_steps and not make(server).capabilities.token_steps
    with pytest.raises(NotImplementedError):
        extend(gen, ["The sea"], 2)
    assert len(server.chat_requests()) == 1
    # An explicit mode is the user's word against the probe.
    assert make(server, continuation="prefill").capabilities.token_steps
    assert not make(server, continuation="off").capabilities.token_steps


def test_a_failure_that_is_not_a_refusal_is_not_learnt(server: StubServer) -> None:
    server.script.extend(["400"])
    gen = make(server)
    with pytest.raises(BackendError, match="rejected the request"):
        extend(gen, ["The sea"], 2)
    assert gen.capabilities.token_steps
    assert extend(gen, ["The sea"], 1).candidates[0].text == " is"


def test_next_token_of_a_partial_answer(server: StubServer) -> None:
    gen = make(server)
    top = asyncio.run(gen.next_token_logprobs([*SEA, Message("assistant", "The sea")]))
    assert max(top, key=lambda t: top[t]) == " is"
    assert server.chat_requests()[-1].body["continue_final_message"] is True
    plain = asyncio.run(gen.next_token_logprobs(SEA))
    assert "continue_final_message" not in server.chat_requests()[-1].body and plain
    off = make(server, continuation="off")
    with pytest.raises(BackendError, match="cannot continue partial answers"):
        asyncio.run(off.next_token_logprobs([*SEA, Message("assistant", "The sea")]))


def test_metered_generator_reads_capabilities_through(server: StubServer) -> None:
    gen = make(server)
    metered = MeteredGenerator(gen)
    assert not metered.capabilities.n_sampling  # unknown until probed
    asyncio.run(metered.generate(SEA, 2, GenerationParams()))
    assert metered.capabilities.n_sampling and metered.capabilities == gen.capabilities


POLICY = """
name: remote-search
generator:
  backend: openai
  base_url: {url}
  model: stub
  backoff_s: 0.001
  max_tokens: 40
n: 3
scorers:
  - {{name: rules, kind: rules}}
strategy: {strategy}
"""


@pytest.mark.parametrize(
    "strategy",
    [
        "{kind: early_rejection, chunk_tokens: 4, keep: 0.5}",
        "{kind: guided, block_tokens: 4, top_k: 2}",
        "{kind: guided, block_tokens: 1, top_k: 2}",
    ],
)
def test_search_strategies_run_against_a_remote_engine(
    server: StubServer, tmp_path: Path, strategy: str
) -> None:
    server.fresh_from_full = True
    server.logprobs_for = lambda body: {"The": -0.1, "A": -2.0}  # the first token
    path = tmp_path / "remote.yaml"
    path.write_text(textwrap.dedent(POLICY.format(url=server.base_url, strategy=strategy)))
    al = Aligner.from_policy(path)
    res = al.align("Describe the sea.")
    al.close()
    assert res.best is not None
    assert res.candidates[res.best].text.split() == FULL.split()
    continued = [
        r.body for r in server.chat_requests() if r.body["messages"][-1]["role"] == "assistant"
    ]
    assert continued and all(b["continue_final_message"] is True for b in continued)


def test_aligntime_serve_is_learnt_as_a_server_that_cannot_continue(tmp_path: Path) -> None:
    # aligntime aligns whole answers: it refuses continue_final_message by name, so a
    # remote openai generator pointed at it learns that (instead of getting a new answer).
    from aligntime.policy.loader import parse_policy
    from aligntime.server import ServerOptions, app_from_policies
    from aligntime.server.testing import LiveServer

    policy = parse_policy("name: p\ngenerator: {backend: fake}\nn: 2\n")
    with LiveServer(app_from_policies([policy], ServerOptions())) as live:
        # logprobs off: aligntime refuses them too.
        url = live.url + "/v1"
        opts = OpenAIOptions(base_url=url, model="p", api_key_env=None, logprobs=False)
        gen = OpenAIGenerator(opts)
        with pytest.raises(BackendError, match="continue_final_message is not supported"):
            extend(gen, ["The sea"], 2)
        assert not gen.capabilities.token_steps
        assert asyncio.run(gen.generate(SEA, 1, GenerationParams())).candidates[0].text
