"""The openai backend against real model output, and the pairwise judge on the real model.

The loopback test server (tests/openai_stub_server.py) forwards every
``/v1/chat/completions`` request to the embedded SmolLM2 through llama.cpp's
own server loop (xllamacpp ``handle_chat_completions``), so the openai backend
parses what a llama.cpp server really answers, over real HTTP.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aligntime import Aligner
from aligntime.errors import BackendError
from aligntime.generators.llamacpp import LlamaCppEngine, LlamaCppGenerator, LlamaCppOptions
from aligntime.generators.openai import OpenAIGenerator, OpenAIOptions
from aligntime.scorers.judge import Judge, JudgeOptions
from aligntime.scorers.pairwise_judge import PairwiseJudge, PairwiseJudgeOptions
from aligntime.types import Candidate, GenerationParams, Message
from openai_stub_server import StubServer

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
SEA = [Message("user", "Write one sentence about the sea.")]
FEVER = [Message("user", "My child has a fever. What should I do?")]
ANSWERS = [
    Candidate("Give plenty of fluids, let them rest, and call a doctor if the fever is high."),
    Candidate("The capital of France is Paris."),
    Candidate("Figure it out yourself."),
]


@pytest.fixture(scope="module")
def engine() -> LlamaCppEngine:
    # The default settings, so the judges below share this loaded model.
    return LlamaCppGenerator(LlamaCppOptions(model=MODEL)).engine


@pytest.fixture(scope="module")
def server(engine: LlamaCppEngine) -> Iterator[StubServer]:
    def forward(body: dict[str, Any]) -> dict[str, Any]:
        try:
            return engine.chat(body)
        except (BackendError, ValueError) as exc:  # llama.cpp's own 400s
            return {"error": {"message": str(exc)}}

    srv = StubServer(forward=forward).start()
    yield srv
    srv.stop()


def remote(server: StubServer, **options: Any) -> OpenAIGenerator:
    options = {"max_tokens": 16, **options}
    return OpenAIGenerator(OpenAIOptions(base_url=server.base_url, model=MODEL, **options))


def test_native_n_on_a_real_llamacpp_reply(server: StubServer) -> None:
    before = len(server.chat_requests())
    gen = remote(server)
    out = asyncio.run(gen.generate(SEA, 3, GenerationParams(seed=5)))
    # llama.cpp honours n: detected and remembered, one request
    assert len(server.chat_requests()) - before == 1 and gen.capabilities.n_sampling
    assert len(out.candidates) == 3 and len({c.text for c in out.candidates}) > 1
    assert all(c.text.strip() and 0 < c.tokens <= 16 for c in out.candidates)
    assert all(c.finish_reason in ("stop", "length") for c in out.candidates)
    assert out.usage.completion_tokens == sum(c.tokens for c in out.candidates)
    assert out.usage.prompt_tokens > 5


def test_fanout_seeds_reproduce_on_the_real_model(server: StubServer) -> None:
    # One request at a time: llama.cpp's output for a seed depends on which other
    # sequences share its batch, so only sequential requests reproduce exactly.
    gen = remote(server, n_mode="fanout", concurrency=1, max_tokens=8)
    first = asyncio.run(gen.generate(SEA, 2, GenerationParams(seed=11)))
    again = asyncio.run(gen.generate(SEA, 2, GenerationParams(seed=11)))
    texts = [c.text for c in first.candidates]
    assert texts == [c.text for c in again.candidates]
    assert texts[0] != texts[1], "fan-out requests must carry distinct seeds"


def test_engine_errors_come_back_as_a_clear_backend_error(server: StubServer) -> None:
    gen = remote(server, n_mode="native", extra_body={"response_format": {"type": "nonsense"}})
    with pytest.raises(BackendError, match="rejected the request: HTTP 400: response_format"):
        asyncio.run(gen.generate(SEA, 2, GenerationParams()))


def test_judge_over_openai_matches_the_embedded_judge(server: StubServer) -> None:
    over_http = Judge(
        JudgeOptions(backend="openai", model=MODEL, backend_options={"base_url": server.base_url})
    )
    embedded = Judge(JudgeOptions(backend="llamacpp", model=MODEL))

    def one_at_a_time(judge: Judge) -> list[float]:
        # Sequential, so batch composition cannot change the numbers (see above).
        return [asyncio.run(judge.score(FEVER, [c]))[0] for c in ANSWERS]

    remote_values = one_at_a_time(over_http)
    local_values = one_at_a_time(embedded)
    assert all(0.0 <= v <= 1.0 for v in remote_values)
    assert any(v != 0.5 for v in remote_values), "Yes/No must be found in the top tokens"
    # Not bit-identical: llama.cpp's numbers shift by about a hundredth with the state of
    # its prompt cache, but a misread reply (wrong token, wrong choice) is far off.
    assert remote_values == pytest.approx(local_values, abs=0.05)
    over_http.close()


def test_pairwise_judge_on_the_real_model_averages_both_orders() -> None:
    judge = PairwiseJudge(PairwiseJudgeOptions(backend="llamacpp", model=MODEL))
    values = asyncio.run(judge.score(FEVER, ANSWERS))
    assert len(values) == 3 and all(0.0 <= v <= 1.0 for v in values)
    # Round robin: each pair's two win probabilities sum to 1, so the scores sum to N/2.
    assert sum(values) == pytest.approx(1.5)
    assert any(abs(v - 0.5) > 1e-6 for v in values), "A/B must be found in the top tokens"


def test_aligner_on_the_openai_backend_with_real_text(server: StubServer, tmp_path: Path) -> None:
    policy = f"""
    name: remote-real
    generator: {{backend: openai, base_url: "{server.base_url}", model: {MODEL}, max_tokens: 16}}
    n: 2
    prompt: {{system: "You are a helpful assistant. Answer briefly."}}
    scorers:
      - name: judge
        kind: judge
        backend: openai
        model: {MODEL}
        backend_options: {{base_url: "{server.base_url}"}}
    """
    path = tmp_path / "remote.yaml"
    path.write_text(textwrap.dedent(policy))
    al = Aligner.from_policy(path)
    res = al.align("How do I boil an egg?", seed=3)
    assert len(res.candidates) == 2 and res.best is not None
    assert res.text.strip()
    assert all(0.0 <= c.scores["judge"] <= 1.0 for c in res.candidates)
    al.close()


def test_extend_continues_a_partial_answer_on_the_real_model(server: StubServer) -> None:
    # llama.cpp's server loop continues a final assistant message by itself, ignores the
    # continue_final_message fields that continuation: auto sends, and echoes the
    # partial answer in its reply.
    gen = remote(server)
    partial = "The sea is"
    out = asyncio.run(gen.extend(SEA, [partial, partial], 6, GenerationParams(seed=2)))
    sent = server.chat_requests()[-1].body
    assert sent["continue_final_message"] is True
    assert sent["messages"][-1] == {"role": "assistant", "content": partial}
    assert gen.capabilities.token_steps
    for c in out.candidates:
        assert c.text.strip() and not c.text.startswith(partial), c.text
        assert 0 < c.tokens <= 6 and c.finish_reason in ("stop", "length")
    assert out.usage.completion_tokens == sum(c.tokens for c in out.candidates)
    # The same continuation the embedded backend gives (greedy, one at a time).
    greedy = GenerationParams(temperature=0.0)
    over_http = asyncio.run(gen.extend(SEA, [partial], 6, greedy)).candidates[0]
    embedded = LlamaCppGenerator(LlamaCppOptions(model=MODEL))
    local = asyncio.run(embedded.extend(SEA, [partial], 6, greedy)).candidates[0]
    assert over_http.text == local.text


def test_early_rejection_over_openai_on_the_real_model(server: StubServer, tmp_path: Path) -> None:
    policy = f"""
    name: remote-search
    generator: {{backend: openai, base_url: "{server.base_url}", model: {MODEL}, max_tokens: 12}}
    n: 2
    scorers:
      - {{name: rules, kind: rules}}
    strategy: {{kind: early_rejection, chunk_tokens: 4, keep: 0.5}}
    """
    path = tmp_path / "search.yaml"
    path.write_text(textwrap.dedent(policy))
    before = len(server.chat_requests())
    al = Aligner.from_policy(path)
    res = al.align("Write one sentence about the sea.", seed=4)
    al.close()
    assert res.best is not None and res.text.strip()
    continued = [
        r.body
        for r in server.chat_requests()[before:]
        if r.body["messages"][-1]["role"] == "assistant"
    ]
    assert continued, "early rejection must continue the kept partial answers"
