"""What a backend answers that is the client's fault, or is no answer (issue 18, items 3 and 9).

A prompt longer than the model's context is a 400 ``context_length_exceeded``
with the token counts, as OpenAI answers it, not a 503 "backend unavailable".
A choice whose ``content`` is null holds no answer: it is never a candidate.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from aligntime.errors import BackendError, ContextLengthError
from aligntime.generators.llamacpp import LlamaCppEngine
from aligntime.generators.openai import OpenAIGenerator, OpenAIOptions
from aligntime.generators.openai_chat import collect
from aligntime.policy.loader import parse_policy
from aligntime.server import ServerOptions, app_from_policies
from aligntime.server.testing import LiveServer
from aligntime.types import GenerationParams, Message
from openai_stub_server import StubServer

LLAMA_ERROR = {
    "error": {
        "code": 400,
        "message": "request (631 tokens) exceeds the available context size (512 tokens), "
        "try increasing it",
        "type": "exceed_context_size_error",
        "n_prompt_tokens": 631,
        "n_ctx": 512,
    }
}
VLLM_MESSAGE = (
    "This model's maximum context length is 2048 tokens. However, you requested 2300 tokens "
    "(2044 in the messages, 256 in the completion). Please reduce the length of the messages "
    "or completion."
)


@pytest.fixture
def stub() -> Iterator[StubServer]:
    server = StubServer().start()
    yield server
    server.stop()


def _policy(stub: StubServer, n: int = 2) -> str:
    return textwrap.dedent(
        f"""
        name: p
        generator: {{backend: openai, base_url: "{stub.base_url}", model: m,
                     api_key_env: null, max_retries: 0, n_mode: native}}
        n: {n}
        scorers:
          - {{name: rules, kind: rules}}
        """
    )


class _Engine:
    """llama.cpp's server loop, answering with a canned reply."""

    def __init__(self, reply: dict[str, Any]) -> None:
        self.reply = reply

    def handle_chat_completions(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.reply


def test_llamacpp_context_overflow_is_a_context_length_error() -> None:
    engine = object.__new__(LlamaCppEngine)
    engine._server = _Engine(LLAMA_ERROR)
    with pytest.raises(ContextLengthError) as info:
        engine.chat({"messages": []})
    assert info.value.prompt_tokens == 631 and info.value.context_tokens == 512
    engine._server = _Engine({"error": {"code": 500, "message": "slot unavailable"}})
    with pytest.raises(BackendError, match="slot unavailable"):
        engine.chat({"messages": []})


@pytest.mark.parametrize(
    ("reply", "prompt", "limit"),
    [
        (LLAMA_ERROR, 631, 512),
        ({"error": {"message": VLLM_MESSAGE, "type": "BadRequestError", "code": 400}}, 2300, 2048),
        (
            {
                "error": {
                    "message": "This model's maximum context length is 8192 tokens. However, "
                    "your messages resulted in 9000 tokens. Please reduce the length.",
                    "type": "invalid_request_error",
                    "code": "context_length_exceeded",
                }
            },
            9000,
            8192,
        ),
    ],
)
def test_openai_backends_context_overflow_is_a_400_with_the_counts(
    stub: StubServer, reply: dict[str, Any], prompt: int, limit: int
) -> None:
    stub.forward = lambda body: reply  # sent as a 400, as these servers do
    app = app_from_policies([parse_policy(_policy(stub))], ServerOptions())
    with LiveServer(app) as live:
        body = {"model": "p", "messages": [{"role": "user", "content": "long " * 50}]}
        for stream in (False, True):
            r = httpx.post(live.url + "/v1/chat/completions", json={**body, "stream": stream})
            if stream:  # the role chunk is out: the error is an event
                assert '"context_length_exceeded"' in r.text and r.text.endswith("[DONE]\n\n")
                continue
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["code"] == "context_length_exceeded"
            assert error["type"] == "invalid_request_error" and error["param"] == "messages"
            assert str(prompt) in error["message"] and str(limit) in error["message"]
    assert len(stub.chat_requests()) == 2  # a client error is not retried


def _choice(i: int, content: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "index": i,
        "message": {"role": "assistant", "content": content, **extra},
        "finish_reason": "stop",
    }


def test_a_null_content_choice_is_not_a_candidate() -> None:
    reply = {
        "choices": [_choice(0, None), _choice(1, "Boil it."), _choice(2, None, refusal="No.")],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4},
    }
    candidates, usage = collect([reply])
    assert [c.text for c in candidates] == ["Boil it.", "No."]
    assert usage.prompt_tokens == 5


def test_a_reply_with_only_null_content_is_a_backend_error_not_an_empty_answer(
    stub: StubServer,
) -> None:
    stub.forward = lambda body: {
        "choices": [_choice(i, None) for i in range(int(body.get("n", 1)))],
        "usage": {"prompt_tokens": 5, "completion_tokens": 0},
    }
    gen = OpenAIGenerator(
        OpenAIOptions(base_url=stub.base_url, model="m", api_key_env=None, max_retries=0)
    )
    msgs = [Message("user", "hi")]
    with pytest.raises(BackendError, match="no text"):
        asyncio.run(gen.generate(msgs, 2, GenerationParams()))
    app = app_from_policies([parse_policy(_policy(stub))], ServerOptions())
    with LiveServer(app) as live:
        r = httpx.post(
            live.url + "/v1/chat/completions",
            json={"model": "p", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 503 and r.json()["error"]["code"] == "backend_unavailable"
        assert "no text" in r.json()["error"]["message"]
