"""What a client (or an attacker) sees of API keys and the rate limit.

Over loopback where the behaviour is visible on the wire (auth schemes, one
bucket per client address); with a hand-driven clock where it takes minutes
or hours of real time (refill after idling, how long Retry-After says to wait).
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aligntime.server import ServerOptions, app_from_policies
from aligntime.server.errors import ApiError
from aligntime.server.security import Authenticator, RateLimiter, key_id
from aligntime.server.testing import LiveServer

POLICY = """
name: tiny
generator: {backend: fake, responses: ["A short and polite answer."]}
n: 1
scorers:
  - {name: rules, kind: rules}
"""
BODY = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}]}


def _policy(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(textwrap.dedent(POLICY))
    return path


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = _policy(tmp_path_factory.mktemp("keyed"))
    options = ServerOptions(api_keys=frozenset({"key-a", "key-b"}))
    with LiveServer(app_from_policies([path], options)) as live:
        yield live.url + "/v1/chat/completions"


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic key-a",  # another scheme, however valid the key
        "Token key-a",
        "key-a",  # no scheme at all
        "Bearer",
        "Bearer key-",  # a prefix of a key
        "Bearer key-a-and-more",
        "Bearer key-akey-b",
        "Bearer KEY-A",  # keys are case-sensitive
    ],
)
def test_only_a_bearer_token_equal_to_a_key_is_accepted(keyed: str, authorization: str) -> None:
    r = httpx.post(keyed, json=BODY, headers={"Authorization": authorization})
    assert r.status_code == 401, authorization
    assert r.json()["error"] == {
        "message": "invalid API key",
        "type": "authentication_error",
        "param": None,
        "code": "invalid_api_key",
    }
    assert "polite" not in r.text


def test_a_missing_key_is_told_how_to_send_one(keyed: str) -> None:
    r = httpx.post(keyed, json=BODY)
    assert r.status_code == 401
    error = r.json()["error"]
    assert error["code"] == "missing_api_key" and error["type"] == "authentication_error"
    assert error["message"] == "missing API key: send it as 'Authorization: Bearer KEY'"


@pytest.mark.parametrize(
    "authorization", ["Bearer key-a", "bearer key-b", "BEARER key-a", "Bearer  key-b"]
)
def test_the_bearer_scheme_is_case_insensitive(keyed: str, authorization: str) -> None:
    # RFC 9110: the scheme is case-insensitive, one or more spaces may follow it;
    # the token is case-sensitive.
    r = httpx.post(keyed, json=BODY, headers={"Authorization": authorization})
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "A short and polite answer."


def test_the_authenticator_names_the_key_it_accepted_and_nothing_else() -> None:
    auth = Authenticator(frozenset({"key-a", "key-b"}))
    assert auth.enabled
    assert auth.check("Bearer key-b") == key_id("key-b") != key_id("key-a")
    assert len(key_id("key-b")) == 12 and "key-b" not in key_id("key-b")
    with pytest.raises(ApiError) as info:
        auth.check(None)
    assert (info.value.status, info.value.code) == (401, "missing_api_key")
    with pytest.raises(ApiError) as info:
        auth.check("")
    assert (info.value.status, info.value.code) == (401, "missing_api_key")
    open_server = Authenticator(frozenset())
    assert not open_server.enabled
    assert open_server.check("Basic whatever") is None  # no keys: nothing to check


def _local(address: str) -> httpx.Client:
    """A client whose connections come from ``address`` (any 127.x.y.z is loopback)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address))


def test_without_keys_each_client_address_has_its_own_bucket(tmp_path: Path) -> None:
    options = ServerOptions(rate_limit=2)
    with LiveServer(app_from_policies([_policy(tmp_path)], options)) as live:
        url = live.url + "/v1/chat/completions"
        with _local("127.0.0.2") as first, _local("127.0.0.3") as second:
            codes = [first.post(url, json=BODY).status_code for _ in range(3)]
            assert codes == [200, 200, 429]
            limited = first.post(url, json=BODY)
            assert limited.status_code == 429
            error = limited.json()["error"]
            assert error["code"] == "rate_limit_exceeded" and error["type"] == "rate_limit_error"
            wait = int(limited.headers["retry-after"])
            assert wait >= 1
            assert error["message"] == (
                f"rate limit of 2 requests per minute reached; retry in {wait} s"
            )
            # Another address is not held back by the first one's requests...
            assert [second.post(url, json=BODY).status_code for _ in range(2)] == [200, 200]
            assert second.post(url, json=BODY).status_code == 429
            # ...and a header a client sets itself does not buy it a fresh bucket.
            spoofed = first.post(url, json=BODY, headers={"X-Forwarded-For": "10.9.8.7"})
            assert spoofed.status_code == 429
        # Probes and scrapers are never limited.
        assert httpx.get(live.url + "/healthz").status_code == 200


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _limiter(per_minute: int) -> tuple[RateLimiter, _Clock]:
    limiter = RateLimiter(per_minute)
    clock = _Clock()
    limiter._clock = clock  # type: ignore[method-assign]
    return limiter, clock


def _allowed(limiter: RateLimiter, client: str, attempts: int) -> int:
    """How many of ``attempts`` back-to-back requests get through."""
    ok = 0
    for _ in range(attempts):
        try:
            limiter.check(client)
        except ApiError:
            continue
        ok += 1
    return ok


def test_a_client_idle_for_an_hour_bursts_at_most_its_per_minute_limit() -> None:
    limiter, clock = _limiter(3)
    assert _allowed(limiter, "a", 10) == 3
    clock.now += 3600.0
    assert _allowed(limiter, "a", 10) == 3
    # A new client starts with a full bucket, not more.
    assert _allowed(limiter, "b", 10) == 3


def test_tokens_refill_at_the_configured_rate() -> None:
    limiter, clock = _limiter(6)  # one every ten seconds
    assert _allowed(limiter, "a", 6) == 6
    clock.now += 9.9
    assert _allowed(limiter, "a", 1) == 0
    clock.now += 0.1
    assert _allowed(limiter, "a", 2) == 1
    clock.now += 30.0
    assert _allowed(limiter, "a", 5) == 3


@pytest.mark.parametrize("per_minute", [1, 6, 7, 60, 90, 1000])
def test_retry_after_is_a_whole_number_of_seconds_that_is_enough_and_no_more(
    per_minute: int,
) -> None:
    for partial in (0.0, 0.37, 0.81):
        limiter, clock = _limiter(per_minute)
        assert _allowed(limiter, "a", per_minute) == per_minute
        # Part of a token has come back: the wait is what is left, rounded up.
        clock.now += partial * 60.0 / per_minute
        with pytest.raises(ApiError) as info:
            limiter.check("a")
        assert info.value.status == 429
        wait = int(info.value.headers["Retry-After"])
        assert wait >= 1
        assert f"retry in {wait} s" in info.value.message
        # Retrying a whole second early is still too early (the header is not padded)...
        clock.now += wait - 1.0
        if wait > 1:
            with pytest.raises(ApiError):
                limiter.check("a")
        # ...and retrying after the wait the server asked for succeeds.
        clock.now += 1.0
        limiter.check("a")


def test_a_limit_of_zero_turns_limiting_off() -> None:
    limiter, _ = _limiter(0)
    assert _allowed(limiter, "a", 1000) == 1000


def test_forgetting_idle_clients_never_resets_an_active_clients_bucket() -> None:
    limiter, clock = _limiter(2)
    assert _allowed(limiter, "attacker", 2) == 2
    clock.now += 1.0
    # Enough other clients to make the limiter prune its table.
    for i in range(100_001):
        limiter.check(f"c{i}")
    assert _allowed(limiter, "attacker", 1) == 0
    clock.now += 120.0
    limiter.check("someone-new")  # prunes again: everyone above has been idle for 2 minutes
    assert len(limiter._buckets) < 10
    assert _allowed(limiter, "attacker", 5) == 2


def test_failed_attempts_spend_their_own_bucket_that_is_checked_without_spending() -> None:
    # The server spends a token of the address's "failed keys" bucket per wrong key
    # and checks it (without spending) before every attempt: five wrong keys a minute.
    limiter, clock = _limiter(5)
    for _ in range(20):
        limiter.ensure_left("10.0.0.1")  # checking alone never uses the bucket up
    for _ in range(5):
        limiter.ensure_left("10.0.0.1")
        limiter.spend("10.0.0.1")
    with pytest.raises(ApiError) as info:
        limiter.ensure_left("10.0.0.1")
    assert info.value.status == 429 and info.value.headers["Retry-After"] == "12"
    limiter.spend("10.0.0.1")  # spending an empty bucket never raises
    limiter.ensure_left("10.0.0.2")  # another address is not held back
    clock.now += 12.0
    limiter.ensure_left("10.0.0.1")  # one token back after 12 s
    one, _ = _limiter(1)
    one.spend("a")
    with pytest.raises(ApiError):
        one.ensure_left("a")
    off, _ = _limiter(0)
    for _ in range(10):
        off.spend("a")
    off.ensure_left("a")


def test_wrong_keys_from_one_address_do_not_lock_out_another(tmp_path: Path) -> None:
    options = ServerOptions(api_keys=frozenset({"right"}), rate_limit=2)
    with LiveServer(
        app_from_policies(
            [
                _policy(tmp_path),
            ],
            options,
        )
    ) as live:
        url = live.url + "/v1/chat/completions"
        right = {"Authorization": "Bearer right"}
        with _local("127.0.0.4") as guesser, _local("127.0.0.5") as user:
            codes = [
                guesser.post(url, json=BODY, headers={"Authorization": f"Bearer g{i}"}).status_code
                for i in range(4)
            ]
            assert codes == [401, 401, 429, 429]
            assert guesser.post(url, json=BODY, headers=right).status_code == 429
            assert user.post(url, json=BODY, headers=right).status_code == 200


def test_an_address_flood_does_not_rebuild_the_table_on_every_request() -> None:
    limiter, clock = _limiter(2)
    for i in range(100_001):
        limiter.check(f"c{i}")
    rebuilt = limiter._buckets
    # Every client is active, so nothing can be forgotten: the next requests must not
    # copy the 100k-entry table again each time (that would be O(table) per request).
    for i in range(1000):
        limiter.check(f"d{i}")
    assert limiter._buckets is rebuilt
    clock.now += 61.0
    limiter.check("later")  # a minute on, the idle ones go
    assert len(limiter._buckets) == 1
