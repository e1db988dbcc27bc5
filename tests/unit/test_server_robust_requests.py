"""Request fields and client addresses the server got wrong (issue 18, items 2, 4 and 9).

``stop`` may be one string (OpenAI allows it) but never an empty one; a forged
``X-Forwarded-For`` must not buy a fresh rate-limit bucket unless the operator
trusts the proxy that sends it; failed authentication is rate-limited too.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import httpx
import pytest

from aligntime.policy.loader import parse_policy
from aligntime.server import ServerOptions, app_from_policies
from aligntime.server.testing import LiveServer

POLICY = """
name: p
generator: {backend: fake, responses: ["Boil it for seven minutes. Human: and then?"]}
n: 1
scorers:
  - {name: rules, kind: rules}
"""
MSG = [{"role": "user", "content": "How do I boil an egg?"}]
URL = "/v1/chat/completions"


def _app(**options: object) -> LiveServer:
    policy = parse_policy(textwrap.dedent(POLICY))
    return LiveServer(app_from_policies([policy], ServerOptions(**options)))  # type: ignore[arg-type]


def test_stop_may_be_one_string_but_never_an_empty_one() -> None:
    with _app() as live:
        url = live.url + URL
        one = httpx.post(url, json={"model": "p", "messages": MSG, "stop": "Human:"})
        assert one.status_code == 200, one.text
        assert one.json()["choices"][0]["message"]["content"] == "Boil it for seven minutes. "
        four = httpx.post(url, json={"model": "p", "messages": MSG, "stop": ["a", "b", "c", "d"]})
        assert four.status_code == 200
        for stop, param in [
            (["a", "b", "c", "d", "e"], "stop"),
            ([""], "stop.0"),
            (["Human:", ""], "stop.1"),
            ("", "stop"),
        ]:
            for stream in (False, True):
                body = {"model": "p", "messages": MSG, "stop": stop, "stream": stream}
                r = httpx.post(url, json=body)
                assert r.status_code == 400, (stop, r.text)
                assert r.json()["error"]["param"] == param, r.json()
        empty = httpx.post(url, json={"model": "p", "messages": MSG, "stop": [""]})
        assert "at least 1 character" in empty.json()["error"]["message"]


def _forwarded(live: LiveServer, addresses: list[str]) -> list[int]:
    """Statuses of one request per forwarded-for address, over one connection."""
    with httpx.Client(base_url=live.url) as http:
        return [
            http.post(
                URL, json={"model": "p", "messages": MSG}, headers={"X-Forwarded-For": address}
            ).status_code
            for address in addresses
        ]


def test_a_forged_forwarded_for_does_not_escape_the_rate_limit() -> None:
    with _app(rate_limit=5) as live:
        codes = _forwarded(live, [f"203.0.113.{i}" for i in range(30)])
    assert codes.count(200) == 5 and codes.count(429) == 25


def test_forwarded_for_is_honoured_only_from_addresses_the_operator_trusts() -> None:
    with _app(rate_limit=5, forwarded_allow_ips=("127.0.0.1",)) as live:
        codes = _forwarded(live, [f"203.0.113.{i}" for i in range(12)])
        # One real client behind the trusted proxy: one bucket.
        same = _forwarded(live, ["198.51.100.7"] * 6)
    assert codes == [200] * 12
    assert same == [200] * 5 + [429]


def test_failed_authentication_is_rate_limited_per_address() -> None:
    with _app(rate_limit=5, api_keys=frozenset({"right"})) as live, httpx.Client() as http:
        url = live.url + URL
        body = {"model": "p", "messages": MSG}

        def attempt(key: str) -> httpx.Response:
            return http.post(url, json=body, headers={"Authorization": f"Bearer {key}"})

        assert attempt("right").status_code == 200
        codes = [attempt(f"guess-{i}").status_code for i in range(30)]
        assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}
        spent = attempt("guess-x")
        assert int(spent.headers["retry-after"]) >= 1
        # Guessing gets no signal once the address is spent: the right key waits too.
        assert attempt("right").status_code == 429
        missing = http.post(url, json=body)
        assert missing.status_code == 429


@pytest.mark.parametrize("value", ["10.0.0.0/8", "127.0.0.1,::1", "*"])
def test_forwarded_allow_ips_accepts_addresses_networks_and_star(value: str) -> None:
    from aligntime.server.config import parse_forwarded_allow_ips

    assert parse_forwarded_allow_ips(value) == tuple(v.strip() for v in value.split(","))


def test_forwarded_allow_ips_names_a_bad_entry(tmp_path: Path) -> None:
    from aligntime.errors import ConfigError
    from aligntime.server.config import parse_forwarded_allow_ips

    with pytest.raises(ConfigError, match="'not-an-ip'"):
        parse_forwarded_allow_ips("127.0.0.1,not-an-ip")
