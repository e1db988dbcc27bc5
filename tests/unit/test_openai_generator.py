"""The openai backend against a real HTTP server on loopback (tests/openai_stub_server.py).

No mocked transport: every test talks to a server on 127.0.0.1 through real
sockets, and faults (500s, 429s, hangs, malformed bodies, dropped connections)
are the server's real behaviour.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aligntime import Aligner
from aligntime.errors import BackendError, ConfigError
from aligntime.generators.http_retry import RetryPolicy, backoff_delay, parse_retry_after
from aligntime.generators.openai import OpenAIGenerator, OpenAIOptions
from aligntime.policy.loader import load_policy
from aligntime.scorers.judge import Judge, JudgeOptions
from aligntime.types import Generation, GenerationParams, Message
from openai_stub_server import StubServer

MSGS = [Message("system", "Be brief."), Message("user", "What is the capital of France?")]


@pytest.fixture(autouse=True)
def _no_ambient_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


@pytest.fixture
def server() -> Iterator[StubServer]:
    srv = StubServer().start()
    yield srv
    srv.stop()


def make(server: StubServer, **options: Any) -> OpenAIGenerator:
    defaults: dict[str, Any] = {"max_retries": 2, "backoff_s": 0.001, "timeout_s": 5.0}
    opts = OpenAIOptions(base_url=server.base_url, model="stub-model", **{**defaults, **options})
    return OpenAIGenerator(opts)


def generate(gen: OpenAIGenerator, n: int, **params: Any) -> Generation:
    return asyncio.run(gen.generate(MSGS, n, GenerationParams(**params)))


def test_native_n_is_one_request_with_exact_usage(server: StubServer) -> None:
    gen = make(server, n_mode="native", extra_body={"top_k": 40}, max_tokens=64)
    out = generate(gen, 4, seed=3)
    assert len(out.candidates) == 4
    assert len({c.text for c in out.candidates}) == 4
    assert all(c.finish_reason == "stop" for c in out.candidates)
    assert [c.tokens for c in out.candidates] == [len(c.text.split()) for c in out.candidates]
    assert out.usage.completion_tokens == sum(c.tokens for c in out.candidates)
    assert all(c.logprob == pytest.approx(-0.5 * c.tokens) for c in out.candidates)
    assert out.usage.prompt_tokens == 8  # the server's own count, read once
    [request] = server.chat_requests()
    body = request.body
    assert body["n"] == 4 and body["seed"] == 3 and body["model"] == "stub-model"
    assert body["top_k"] == 40 and body["max_tokens"] == 64 and body["logprobs"] is True
    assert body["messages"][1] == {"role": "user", "content": MSGS[1].content}
    assert "authorization" not in request.headers
    assert gen.capabilities.n_sampling and gen.capabilities.logprobs


def test_auto_detects_ignored_n_once_and_fans_out_with_seeds(server: StubServer) -> None:
    server.honour_n = False
    gen = make(server)
    assert not gen.capabilities.n_sampling  # unknown until probed
    out = generate(gen, 3, seed=10)
    assert len(out.candidates) == 3 and len({c.text for c in out.candidates}) == 3
    first = server.chat_requests()
    # the probe asked for 3 and got 1; the other 2 were fanned out with the next seeds
    assert [(r.body["n"], r.body["seed"]) for r in first] in (
        [(3, 10), (1, 11), (1, 12)],
        [(3, 10), (1, 12), (1, 11)],
    )
    assert not gen.capabilities.n_sampling
    # Remembered: the next call (and another generator on the same server) never probes.
    other = make(server)
    generate(other, 3, seed=20)
    later = server.chat_requests()[3:]
    assert len(later) == 3 and all(r.body["n"] == 1 for r in later)
    assert sorted(r.body["seed"] for r in later) == [20, 21, 22]


def test_auto_detects_a_server_that_rejects_n(server: StubServer) -> None:
    server.reject_n = True
    gen = make(server)
    out = generate(gen, 3)
    assert len(out.candidates) == 3
    assert [r.body["n"] for r in server.chat_requests()] == [3, 1, 1, 1]
    generate(gen, 2)
    assert [r.body["n"] for r in server.chat_requests()[4:]] == [1, 1]


def test_auto_remembers_a_server_that_honours_n(server: StubServer) -> None:
    gen = make(server)
    generate(gen, 3)
    generate(gen, 2)
    assert [r.body["n"] for r in server.chat_requests()] == [3, 2]
    assert gen.capabilities.n_sampling


def test_fanout_is_concurrent_but_bounded(server: StubServer) -> None:
    server.delay_s = 0.05
    gen = make(server, n_mode="fanout", concurrency=2)
    out = generate(gen, 6, seed=5)
    assert len(out.candidates) == 6
    assert sorted(r.body["seed"] for r in server.chat_requests()) == [5, 6, 7, 8, 9, 10]
    assert server.max_in_flight == 2
    # usage is summed over the six replies
    assert out.usage.prompt_tokens == 6 * 8
    assert out.usage.completion_tokens == sum(c.tokens for c in out.candidates)


def test_5xx_are_retried(server: StubServer) -> None:
    server.script.extend(["500", "503"])
    out = generate(make(server, n_mode="native"), 2)
    assert len(out.candidates) == 2
    assert len(server.chat_requests()) == 3


def test_retries_give_up_with_the_last_error(server: StubServer) -> None:
    server.script.extend(["500"] * 5)
    with pytest.raises(BackendError, match=r"failed after 3 attempts: HTTP 500: scripted 500") as e:
        generate(make(server, n_mode="native", max_retries=2), 2)
    assert e.value.hint and "server is running" in e.value.hint
    assert len(server.chat_requests()) == 3


def test_429_waits_for_retry_after(server: StubServer) -> None:
    server.retry_after = "0.3"
    server.script.append("429")
    generate(make(server, n_mode="native", backoff_s=0.0), 2)
    first, second = server.chat_requests()
    assert second.at - first.at >= 0.3


def test_retry_after_ms_is_honoured(server: StubServer) -> None:
    server.error_headers = {"retry-after-ms": "300"}
    server.script.append("503")
    generate(make(server, n_mode="native", backoff_s=0.0), 2)
    first, second = server.chat_requests()
    assert second.at - first.at >= 0.3


def test_x_should_retry_overrides_the_status(server: StubServer) -> None:
    server.error_headers = {"x-should-retry": "false"}
    server.script.append("503")
    with pytest.raises(BackendError, match=r"rejected the request: HTTP 503") as e:
        generate(make(server, n_mode="native"), 2)
    assert e.value.status == 503 and "x-should-retry" in (e.value.hint or "")
    assert len(server.chat_requests()) == 1
    server.error_headers = {"x-should-retry": "true"}
    server.script.append("400")
    assert len(generate(make(server, n_mode="native"), 2).candidates) == 2
    assert len(server.chat_requests()) == 3  # the 400 was retried, as the server asked


def test_requests_go_through_the_official_client(server: StubServer) -> None:
    generate(make(server, n_mode="native"), 2)
    headers = server.chat_requests()[-1].headers
    assert "x-stainless-retry-count" in headers and "/Python " in headers["user-agent"]
    assert "authorization" not in headers  # no key variable set: no key sent


def test_other_4xx_are_not_retried(server: StubServer) -> None:
    server.script.extend(["400", "400"])
    with pytest.raises(BackendError, match=r"rejected the request: HTTP 400: scripted 400"):
        generate(make(server, n_mode="native"), 2)
    assert len(server.chat_requests()) == 1


def test_a_hung_request_times_out_and_is_retried(server: StubServer) -> None:
    server.hang_s = 3.0
    server.script.append("hang")
    out = generate(make(server, n_mode="native", timeout_s=0.3), 2)
    assert len(out.candidates) == 2 and len(server.chat_requests()) == 2
    server.script.extend(["hang", "hang"])
    with pytest.raises(BackendError, match=r"after 2 attempts: no reply within 0\.3 s"):
        generate(make(server, n_mode="native", timeout_s=0.3, max_retries=1), 2)


def test_malformed_200_is_an_error_not_a_retry(server: StubServer) -> None:
    server.script.append("malformed")
    with pytest.raises(BackendError, match="the reply is not JSON"):
        generate(make(server, n_mode="native"), 2)
    assert len(server.chat_requests()) == 1
    server.script.append("nochoices")
    with pytest.raises(BackendError, match="no 'choices' list") as e:
        generate(make(server, n_mode="native"), 2)
    assert e.value.hint and "/v1" in e.value.hint


def test_malformed_5xx_body_is_retried(server: StubServer) -> None:
    server.script.append("malformed500")
    out = generate(make(server, n_mode="native"), 2)
    assert len(out.candidates) == 2 and len(server.chat_requests()) == 2


def test_a_connection_dropped_mid_response_is_retried(server: StubServer) -> None:
    server.script.append("drop")
    out = generate(make(server, n_mode="native"), 3)
    assert len(out.candidates) == 3 and len(server.chat_requests()) == 2
    server.script.extend(["drop", "drop"])
    with pytest.raises(BackendError, match="connection failed"):
        generate(make(server, n_mode="native", max_retries=1), 3)


def test_partial_fanout_failure_is_tolerated_down_to_min_candidates(
    server: StubServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.script.extend(["500", "500"])
    with caplog.at_level(logging.WARNING, logger="aligntime.generators.openai"):
        out = generate(make(server, n_mode="fanout", max_retries=0), 4)
    assert len(out.candidates) == 2
    assert "returned 2 of 4 candidates; 2 requests failed" in caplog.text
    server.script.extend(["500", "500"])
    with pytest.raises(BackendError, match=r"only 2 of 4 candidates arrived.*min_candidates \(3\)"):
        generate(make(server, n_mode="fanout", max_retries=0, min_candidates=3), 4)
    # min_candidates is capped at n: one good candidate of one is enough
    assert len(generate(make(server, n_mode="fanout", min_candidates=3), 1).candidates) == 1


def test_api_key_comes_from_the_named_environment_variable(
    server: StubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.api_key = "sk-right"
    monkeypatch.setenv("STUB_KEY", "sk-right")
    generate(make(server, api_key_env="STUB_KEY", n_mode="native"), 1)
    assert server.chat_requests()[-1].headers["authorization"] == "Bearer sk-right"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong")  # the default variable
    with pytest.raises(BackendError, match="HTTP 401: Incorrect API key") as e:
        generate(make(server, n_mode="native"), 2)
    assert e.value.hint and "API key" in e.value.hint
    assert server.chat_requests()[-1].headers["authorization"] == "Bearer sk-wrong"
    assert len(server.chat_requests()) == 2  # the 401 was not retried


def test_a_named_but_missing_key_variable_is_a_config_error(server: StubServer) -> None:
    with pytest.raises(ConfigError, match="'NO_SUCH_KEY_VAR', which is not set") as e:
        make(server, api_key_env="NO_SUCH_KEY_VAR")
    assert e.value.hint and "export NO_SUCH_KEY_VAR" in e.value.hint


def test_unreachable_server_fails_clearly() -> None:
    opts = OpenAIOptions(
        base_url="http://127.0.0.1:9/v1", model="m", max_retries=1, backoff_s=0.001
    )
    with pytest.raises(BackendError, match=r"127\.0\.0\.1:9/v1.*after 2 attempts: connection"):
        asyncio.run(OpenAIGenerator(opts).generate(MSGS, 1, GenerationParams()))


def test_token_counts_without_logprobs_or_usage(server: StubServer) -> None:
    out = generate(make(server, n_mode="native", logprobs=False), 3)
    # no per-choice logprobs: the reply's completion tokens shared out by length
    assert out.usage.completion_tokens == sum(len(c.text.split()) for c in out.candidates)
    assert abs(sum(c.tokens for c in out.candidates) - out.usage.completion_tokens) <= 2
    single = generate(make(server, n_mode="fanout", logprobs=False), 2)
    assert [c.tokens for c in single.candidates] == [len(c.text.split()) for c in single.candidates]
    server.send_usage = False
    none = generate(make(server, n_mode="native", logprobs=False), 2)
    assert [c.tokens for c in none.candidates] == [
        math.ceil(len(c.text) / 4) for c in none.candidates
    ]
    assert none.usage.prompt_tokens == 0


def test_next_token_logprobs_and_the_judge_over_openai(server: StubServer) -> None:
    def verdict(body: dict[str, Any]) -> dict[str, float]:
        good = "Paris" in body["messages"][-1]["content"]
        return {"Yes": math.log(0.8 if good else 0.1), "No": math.log(0.2 if good else 0.9)}

    server.logprobs_for = verdict
    judge = Judge(
        JudgeOptions(
            backend="openai",
            model="judge-model",
            top_k=5,
            backend_options={"base_url": server.base_url, "backoff_s": 0.001},
        )
    )
    from aligntime.types import Candidate

    values = asyncio.run(judge.score(MSGS, [Candidate("Paris."), Candidate("Berlin.")]))
    assert values == pytest.approx([0.8, 0.1])
    body = server.chat_requests()[0].body
    assert body["max_tokens"] == 1 and body["top_logprobs"] == 5 and body["logprobs"] is True
    assert body["model"] == "judge-model"
    judge.close()


def test_judge_backend_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="judge backend 'openai': base_url: Field required"):
        Judge(JudgeOptions(backend="openai", model="m"))


def test_one_generator_serves_several_event_loops(server: StubServer) -> None:
    gen = make(server, n_mode="native")
    for _ in range(3):  # the CLI runs each call in a fresh asyncio.run loop
        assert len(generate(gen, 2).candidates) == 2
        # the loop's shutdown closed its client, so no socket outlives the loop
        assert all(entry.client.is_closed for entry in gen._clients.values())
    assert len(gen._clients) <= 1  # clients of finished loops are dropped
    gen.close()

    async def twice() -> None:
        await gen.generate(MSGS, 1, GenerationParams())
        await gen.aclose()

    asyncio.run(twice())


POLICY = """
name: remote
generator:
  backend: openai
  base_url: {url}
  model: stub-model
  n_mode: auto
  backoff_s: 0.001
  max_tokens: 32
n: 3
scorers:
  - name: judge
    kind: judge
    model: judge-model
    backend: openai
    backend_options: {{base_url: "{url}", backoff_s: 0.001}}
strategy: {{kind: best_of_n}}
"""


def test_aligner_end_to_end_on_the_openai_backend(server: StubServer, tmp_path: Path) -> None:
    server.honour_n = False  # exercise detection and fan-out through the whole pipeline

    def verdict(body: dict[str, Any]) -> dict[str, float]:
        best = "Answer 0 with seed 42" in body["messages"][-1]["content"]
        return {"Yes": math.log(0.9 if best else 0.3), "No": math.log(0.1 if best else 0.7)}

    server.logprobs_for = verdict
    path = tmp_path / "remote.yaml"
    path.write_text(textwrap.dedent(POLICY.format(url=server.base_url)))
    al = Aligner.from_policy(path)
    res = al.align("What is the capital of France?", seed=40)
    assert len(res.candidates) == 3
    assert res.best is not None and "seed 42" in res.candidates[res.best].text
    assert res.candidates[res.best].scores["judge"] == pytest.approx(0.9)
    assert res.usage.completion_tokens == sum(c.tokens for c in res.candidates)
    again = al.align("What is the capital of France?", n=2, seed=1)  # a second event loop
    assert len(again.candidates) == 2
    al.close()


def test_policy_errors_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\ngenerator: {backend: openai, base_url: localhost:8000, model: m}\n")
    with pytest.raises(ConfigError, match=r"generator\.base_url.*must start with http://"):
        load_policy(path)
    path.write_text("name: bad\ngenerator: {backend: openai, model: m}\n")
    with pytest.raises(ConfigError, match=r"generator\.base_url"):
        load_policy(path)


def test_the_shipped_example_policy_builds() -> None:
    example = Path(__file__).parents[2] / "examples" / "openai.yaml"
    al = Aligner.from_policy(example)  # builds every part; nothing is contacted yet
    assert isinstance(al.generator, OpenAIGenerator)
    assert al.generator.options.base_url == "http://localhost:8000/v1"
    assert [s.name for s in al.scorers] == ["safety", "rules", "preference"]


def test_backoff_is_exponential_jittered_and_capped() -> None:
    policy = RetryPolicy(max_retries=5, backoff_s=0.1, max_backoff_s=0.5)
    for retry, step in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.5), (6, 0.5)]:
        delays = [backoff_delay(policy, retry) for _ in range(50)]
        assert all(step / 2 <= d <= step for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert backoff_delay(policy, 0, retry_after_s=0.3) == 0.3
    assert backoff_delay(policy, 0, retry_after_s=60.0) == 0.5  # capped
    assert parse_retry_after("2") == 2.0 and parse_retry_after("junk") is None
    soon = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25.0 < (parse_retry_after(soon) or 0.0) <= 30.0


def test_the_cli_runs_a_policy_on_the_openai_backend(server: StubServer, tmp_path: Path) -> None:
    policy = tmp_path / "remote.yaml"
    policy.write_text(textwrap.dedent(POLICY.format(url=server.base_url)))
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    run = [sys.executable, "-m", "aligntime", "run", "Capital of France?", "--policy", str(policy)]
    proc = subprocess.run([*run, "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert len(data["candidates"]) == 3 and data["best"] is not None
    # Nothing listens on the discard port: one clear line and exit code 2, no traceback.
    text = policy.read_text().replace(server.base_url, "http://127.0.0.1:9/v1")
    policy.write_text(text.replace("backoff_s: 0.001", "max_retries: 0"))
    proc = subprocess.run(run, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "connection failed" in proc.stderr
    assert "Traceback" not in proc.stderr
