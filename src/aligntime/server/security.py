"""API keys and their rights, the per-key rate limit, and the limit on failed authentication."""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

from aligntime.server.config import ApiKey, Right, implied
from aligntime.server.errors import ApiError


def key_id(key: str) -> str:
    """A short, stable, non-reversible label for a key (for audit rows and logs)."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the key's id and name, and the rights it holds."""

    key_id: str | None
    """The key's short hash (``None`` while keys are off)."""
    name: str | None
    rights: frozenset[Right]
    """With what they imply (:func:`~aligntime.server.config.implied`)."""

    def may(self, right: Right) -> bool:
        """Whether the caller holds ``right``."""
        return right in self.rights


class Authenticator:
    """Checks ``Authorization: Bearer KEY`` against the configured keys and their rights.

    Keys are held and compared as SHA-256 digests, so a keys file may give only the
    digest; the comparison runs against every key in constant time.
    """

    def __init__(
        self, keys: Iterable[ApiKey | str], anonymous: frozenset[Right] = frozenset()
    ) -> None:
        given = [k if isinstance(k, ApiKey) else ApiKey(name=key_id(k), secret=k) for k in keys]
        self._keys = [
            (bytes.fromhex(k.digest()), Caller(k.digest()[:12], k.name, implied(k.rights)))
            for k in given
        ]
        self._anonymous = Caller(None, None, implied(anonymous))

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, authorization: str | None) -> str | None:
        """The key's id, or ``None`` when keys are off; raises 401 on a missing or bad key."""
        return self.identify(authorization).key_id

    def identify(self, authorization: str | None) -> Caller:
        """The caller (anonymous while keys are off); raises 401 on a missing or bad key."""
        if not self._keys:
            return self._anonymous
        if not authorization:
            raise ApiError(
                401,
                "missing API key: send it as 'Authorization: Bearer KEY'",
                type="authentication_error",
                code="missing_api_key",
            )
        scheme, _, token = authorization.partition(" ")
        presented = token.strip().encode() if scheme.lower() == "bearer" else b""
        digest = hashlib.sha256(presented).digest()
        # Constant-time comparison against every key, so timing reveals nothing.
        found: Caller | None = None
        for stored, caller in self._keys:
            if hmac.compare_digest(stored, digest) and presented:
                found = caller
        if found is None:
            raise ApiError(
                401, "invalid API key", type="authentication_error", code="invalid_api_key"
            )
        return found


def forbidden(right: Right, message: str, *, param: str | None = None) -> ApiError:
    """A 403 for a caller without ``right``, saying how a server grants it."""
    return ApiError(
        403,
        f"{message}; the server gives that right with --api-key NAME:KEY:{right} "
        f"or a --keys-file entry with rights: [{right}]",
        type="permission_error",
        param=param,
        code=f"{right}_forbidden",
    )


_MAX_CLIENTS = 100_000
"""Rate-limit buckets kept before idle clients are forgotten."""


class RateLimiter:
    """A token bucket per client: ``per_minute`` requests a minute, bursts up to that many."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._rate = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}
        self._prune_at = _MAX_CLIENTS
        self._pruned = float("-inf")
        self._clock = time.monotonic

    def check(self, client: str) -> None:
        """Take one token for ``client`` or raise 429 with ``Retry-After``."""
        if self.per_minute <= 0:
            return
        now = self._clock()
        tokens = self._tokens(client, now)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            raise self._refusal(tokens)
        self._store(client, tokens - 1.0, now)

    def ensure_left(self, client: str) -> None:
        """Raise 429 when ``client`` has no token left, taking none."""
        if self.per_minute <= 0:
            return
        tokens = self._tokens(client, self._clock())
        if tokens < 1.0:
            raise self._refusal(tokens)

    def spend(self, client: str) -> None:
        """Take a token from ``client`` if one is left; never raises."""
        if self.per_minute <= 0:
            return
        now = self._clock()
        self._store(client, max(0.0, self._tokens(client, now) - 1.0), now)

    def _tokens(self, client: str, now: float) -> float:
        tokens, last = self._buckets.get(client, (float(self.per_minute), now))
        return min(float(self.per_minute), tokens + (now - last) * self._rate)

    def _refusal(self, tokens: float) -> ApiError:
        wait = math.ceil((1.0 - tokens) / self._rate)
        return ApiError(
            429,
            f"rate limit of {self.per_minute} requests per minute reached; retry in {wait} s",
            type="rate_limit_error",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(wait)},
        )

    def _store(self, client: str, tokens: float, now: float) -> None:
        self._buckets[client] = (tokens, now)
        size = len(self._buckets)
        if size > self._prune_at or (size > _MAX_CLIENTS and now - self._pruned >= 60):
            self._prune(now)

    def _prune(self, now: float) -> None:
        """Forget clients idle for a minute (their bucket is full again anyway).

        Clients seen within the minute are kept, so an address flood never resets an
        active client's bucket. The next prune waits until the table has doubled or a
        minute has passed: with 100,000 active addresses a prune on every request would
        cost a full table rebuild per request; this way it is amortised O(1).
        """
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
        self._pruned = now
        self._prune_at = max(_MAX_CLIENTS, 2 * len(self._buckets))
