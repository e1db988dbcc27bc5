"""API keys, body size, n and token limits, and the per-key rate limit, over loopback."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from aligntime.server import ServerOptions, app_from_policies
from aligntime.server.config import keys_from_env
from aligntime.server.errors import ApiError
from aligntime.server.security import RateLimiter
from aligntime.server.testing import LiveServer

POLICY = """
name: tiny
generator: {backend: fake, responses: ["A short and polite answer."]}
n: 2
max_n: 4
scorers:
  - {name: rules, kind: rules}
"""
MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    path = tmp_path_factory.mktemp("limits") / "tiny.yaml"
    path.write_text(textwrap.dedent(POLICY))
    options = ServerOptions(
        api_keys=frozenset({"key-a", "key-b"}),
        max_body_bytes=2048,
        max_n=3,
        max_tokens=64,
        rate_limit=5,
    )
    with LiveServer(app_from_policies([path], options)) as live:
        yield live


def _client(server: LiveServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def test_missing_or_bad_key_is_401(server: LiveServer) -> None:
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "tiny", "messages": MSG})
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "missing_api_key"
    with pytest.raises(openai.AuthenticationError) as info:
        _client(server, "wrong").chat.completions.create(model="tiny", messages=MSG)
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        _client(server, "wrong").models.list()
    # Health and metrics stay open for probes and scrapers.
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert httpx.get(server.url + "/metrics").status_code == 200


def test_good_key_is_served(server: LiveServer) -> None:
    res = _client(server, "key-b").chat.completions.create(model="tiny", messages=MSG)
    assert res.choices[0].message.content == "A short and polite answer."


def test_body_too_large_is_413_with_or_without_content_length(server: LiveServer) -> None:
    big = {"model": "tiny", "messages": [{"role": "user", "content": "x" * 5000}]}
    headers = {"Authorization": "Bearer key-a"}
    r = httpx.post(server.url + "/v1/chat/completions", json=big, headers=headers)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:
        yield b'{"model": "tiny", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}]}'

    r = httpx.post(server.url + "/v1/chat/completions", content=chunks(), headers=headers)
    assert r.status_code == 413


def test_n_and_max_tokens_limits_of_the_server(server: LiveServer) -> None:
    c = _client(server, "key-a")
    with pytest.raises(openai.BadRequestError, match="n must be at most 3"):
        c.chat.completions.create(model="tiny", messages=MSG, n=4)
    with pytest.raises(openai.BadRequestError, match="max_tokens must be at most 64"):
        c.chat.completions.create(model="tiny", messages=MSG, max_tokens=65)


def test_rate_limit_per_key_is_429_with_retry_after(tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(textwrap.dedent(POLICY))
    options = ServerOptions(api_keys=frozenset({"k1", "k2"}), rate_limit=3)
    with LiveServer(app_from_policies([path], options)) as live:
        url = live.url + "/v1/chat/completions"
        body = {"model": "tiny", "messages": MSG}
        codes = [
            httpx.post(url, json=body, headers={"Authorization": "Bearer k1"}).status_code
            for _ in range(4)
        ]
        assert codes == [200, 200, 200, 429]
        r = httpx.post(url, json=body, headers={"Authorization": "Bearer k1"})
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["code"] == "rate_limit_exceeded"
        # Another key has its own bucket.
        ok = httpx.post(url, json=body, headers={"Authorization": "Bearer k2"})
        assert ok.status_code == 200


def test_rate_limiter_refills_over_time() -> None:
    limiter = RateLimiter(60)  # one a second
    now = [100.0]
    limiter._clock = lambda: now[0]  # type: ignore[method-assign]
    for _ in range(60):
        limiter.check("a")
    with pytest.raises(ApiError) as info:
        limiter.check("a")
    assert info.value.status == 429 and info.value.headers["Retry-After"] == "1"
    now[0] += 1.0
    limiter.check("a")
    RateLimiter(0).check("a")  # 0 turns it off


def test_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALIGNTIME_API_KEYS", " a, b ,,")
    assert keys_from_env(["c"]) == frozenset({"a", "b", "c"})
    monkeypatch.delenv("ALIGNTIME_API_KEYS")
    assert keys_from_env(None) == frozenset()
