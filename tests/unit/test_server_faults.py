"""Faults over loopback: backend down (503), time-outs (504), scorers failing closed."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Sequence

import httpx
import openai
import pytest

from aligntime.aligner import Aligner, build
from aligntime.policy.loader import parse_policy
from aligntime.scorers.base import Scorer
from aligntime.server import ServerOptions, app_from_policies, create_app
from aligntime.server.batching import BatchingScorer
from aligntime.server.metering import MeteredGenerator
from aligntime.server.metrics import Metrics
from aligntime.server.service import AlignmentService
from aligntime.server.testing import LiveServer
from aligntime.types import Candidate, Message

MSG = [{"role": "user", "content": "How do I boil an egg?"}]


def _policy(generator: str, extra: str = "", gate: str = "gate: {max: 0.6}") -> str:
    return textwrap.dedent(
        f"""
        name: p
        generator: {generator}
        n: 2
        scorers:
          - {{name: safety, kind: classifier, {gate}}}
          - {{name: rules, kind: rules}}
        fallback: "Sorry, I cannot answer that safely right now."
        {extra}
        """
    )


def _client(live: LiveServer, **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key="x", max_retries=0, **kw)  # type: ignore[arg-type]


def test_backend_down_is_503_with_a_clear_message_then_recovers() -> None:
    policy = parse_policy(_policy("{backend: fake, fail_times: 2, responses: ['Boil it.']}"))
    with LiveServer(app_from_policies([policy], ServerOptions())) as live:
        c = _client(live)
        with pytest.raises(openai.InternalServerError) as info:
            c.chat.completions.create(model="p", messages=MSG)
        assert info.value.status_code == 503
        body = info.value.body
        assert isinstance(body, dict) and body["code"] == "backend_unavailable"
        assert "generator backend of model 'p' is unavailable" in body["message"]
        # Streaming: the role chunk went out first, so the error arrives as an event.
        with pytest.raises(openai.APIError, match="unavailable"):
            list(c.chat.completions.create(model="p", messages=MSG, stream=True))
        # The backend is back: the next request succeeds.
        res = c.chat.completions.create(model="p", messages=MSG)
        assert res.choices[0].message.content == "Boil it."


def test_slow_backend_hits_the_timeout_and_nothing_hangs() -> None:
    policy = parse_policy(_policy("{backend: fake, delay_s: 3.0, responses: ['Boil it.']}"))
    with LiveServer(app_from_policies([policy], ServerOptions(timeout_s=0.3))) as live:
        started = time.monotonic()
        r = httpx.post(
            live.url + "/v1/chat/completions", json={"model": "p", "messages": MSG}, timeout=10
        )
        assert r.status_code == 504
        assert r.json()["error"]["code"] == "timeout"
        assert "0.3 s" in r.json()["error"]["message"]
        assert time.monotonic() - started < 2.5
        # A stream times out the same way, as an error event, and then closes.
        with httpx.stream(
            "POST",
            live.url + "/v1/chat/completions",
            json={"model": "p", "messages": MSG, "stream": True},
            timeout=10,
        ) as s:
            lines = [line for line in s.iter_lines() if line]
        assert '"code": "timeout"' in lines[-2] and lines[-1] == "data: [DONE]"
        assert httpx.get(live.url + "/healthz", timeout=5).status_code == 200


class Broken(Scorer):
    """A scorer whose model is gone: every call fails."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.direction = "lower"

    async def score(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        raise RuntimeError("the safety model is unreachable")


def _service_with_broken(on_error: str, broken: str, *, gated: bool = True) -> AlignmentService:
    policy = parse_policy(
        _policy("{backend: fake, responses: ['Boil it for seven minutes.']}",
                f"on_scorer_error: {on_error}", "gate: {max: 0.6}" if gated else "weight: 1")
    )  # fmt: skip
    metrics = Metrics()
    scorers: list[Scorer] = []
    for spec in policy.scorers:
        inner = (
            Broken(spec.name)
            if spec.name == broken
            else build("scorer", spec.kind, spec.options(), name=spec.name)
        )
        scorers.append(BatchingScorer(inner))
    generator = MeteredGenerator(build("generator", "fake", policy.generator.options()))
    aligner = Aligner(policy, generator=generator, scorers=scorers)
    options = ServerOptions(anonymous_rights=frozenset({"candidates"}))
    return AlignmentService([aligner], options, metrics)


@pytest.mark.parametrize("on_error", ["raise", "degrade"])
def test_a_failing_gate_scorer_fails_closed(on_error: str) -> None:
    service = _service_with_broken(on_error, "safety")
    with LiveServer(create_app(service)) as live:
        c = _client(live)
        res = c.chat.completions.create(
            model="p", messages=MSG, extra_body={"aligntime": {"return_candidates": True}}
        )
        ext = res.model_extra["aligntime"]  # type: ignore[index]
        assert res.choices[0].message.content == "Sorry, I cannot answer that safely right now."
        assert res.choices[0].finish_reason == "content_filter"
        assert ext["fallback"] and ext["fail_closed"] and ext["scorer_errors"] == ["safety"]
        # Every token generated is still counted, even without a Result.
        assert ext["candidates_generated"] == 2
        assert res.usage is not None and res.usage.completion_tokens == 2 * 5
        stream = list(c.chat.completions.create(model="p", messages=MSG, stream=True))
        text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
        assert text == "Sorry, I cannot answer that safely right now."
        metrics = httpx.get(live.url + "/metrics").text
        assert 'aligntime_fallbacks_total{policy="p",reason="fail_closed"} 2.0' in metrics


def test_a_failing_scorer_without_any_gate_is_503_when_the_policy_raises() -> None:
    service = _service_with_broken("raise", "rules", gated=False)
    with LiveServer(create_app(service)) as live:
        r = httpx.post(live.url + "/v1/chat/completions", json={"model": "p", "messages": MSG})
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "scorer_unavailable"
        assert "rules" in r.json()["error"]["message"]
