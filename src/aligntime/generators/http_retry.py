"""POST a JSON body and read a JSON reply, retrying the failures that can pass.

What is retried, and why:

- 408 (request timeout), 429 (rate limited) and every 5xx: the server is slow,
  overloaded or restarting; the same request can succeed later. A 429's
  ``Retry-After`` (seconds or an HTTP date) is honoured, capped at ``max_backoff_s``.
- Connection errors, timeouts and a connection dropped mid-response
  (``httpx.TransportError``): the request may never have reached a healthy
  worker, or its reply was lost on the way.
- A 5xx whose body is not JSON is still a 5xx (proxies answer 502/503 with HTML).

Not retried: any other 4xx (the request itself is wrong: a bad key, an unknown
model, a rejected parameter; sending it again gives the same answer), and a 200
whose complete body is not a JSON object (a server that answers a well-formed
request with garbage does so deterministically; a body cut short by a dropped
connection is a transport error and *is* retried).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a request is retried."""

    max_retries: int = 3
    """Retries after the first attempt."""
    backoff_s: float = 0.5
    """Wait before the first retry; doubles each retry, with random jitter."""
    max_backoff_s: float = 30.0
    """Longest wait before one retry, a server's Retry-After included."""
    timeout_s: float = 120.0
    """Most seconds one attempt may take, from sending to the whole reply read."""


class HTTPFailure(Exception):
    """One failed attempt: why, whether it may be retried, and the server's message."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        server_message: str = "",
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.status = status
        self.server_message = server_message
        self.retry_after_s = retry_after_s


class RetriesExhausted(Exception):
    """Every attempt failed; ``last`` is the final failure, ``attempts`` how many were made."""

    def __init__(self, last: HTTPFailure, attempts: int) -> None:
        super().__init__(last.message)
        self.last = last
        self.attempts = attempts


def backoff_delay(policy: RetryPolicy, retry: int, retry_after_s: float | None = None) -> float:
    """Seconds to wait before retry number ``retry`` (0-based).

    Exponential, with jitter in [0.5, 1] x the step so that many clients that
    failed together do not retry together; a server's Retry-After wins when given.
    """
    if retry_after_s is not None:
        return min(max(retry_after_s, 0.0), policy.max_backoff_s)
    step = policy.backoff_s * (2**retry)
    return float(min(step, policy.max_backoff_s) * random.uniform(0.5, 1.0))


def parse_retry_after(value: str | None) -> float | None:
    """A Retry-After header as seconds: delta-seconds (fractions accepted) or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def server_error_message(response: httpx.Response) -> str:
    """The human-readable part of an error reply (OpenAI's ``{"error": {"message"}}`` shape)."""
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:300]
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data))
        if isinstance(err, dict):
            return str(err.get("message") or err)[:300]
        return str(err)[:300]
    return str(data)[:300]


async def _attempt(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    timeout: float,
) -> dict[str, Any]:
    try:
        # httpx's own timeouts are per socket operation; wait_for bounds the whole attempt,
        # so a server that trickles bytes cannot hold a request forever.
        response = await asyncio.wait_for(
            client.post(url, json=body, headers=headers), timeout=timeout
        )
    except (asyncio.TimeoutError, httpx.TimeoutException) as exc:
        raise HTTPFailure(f"no reply within {timeout:g} s", retryable=True) from exc
    except httpx.TransportError as exc:
        kind = type(exc).__name__
        raise HTTPFailure(f"connection failed ({kind}: {exc})", retryable=True) from exc
    status = response.status_code
    if status >= 400:
        message = server_error_message(response)
        retryable = status in (408, 429) or status >= 500
        retry_after = parse_retry_after(response.headers.get("retry-after")) if retryable else None
        raise HTTPFailure(
            f"HTTP {status}: {message or response.reason_phrase}",
            retryable=retryable,
            status=status,
            server_message=message,
            retry_after_s=retry_after,
        )
    try:
        data = response.json()
    except ValueError as exc:
        raise HTTPFailure(
            f"the reply is not JSON (HTTP {status}): {response.text[:120]!r}", retryable=False
        ) from exc
    if not isinstance(data, dict):
        raise HTTPFailure(
            f"the reply is not a JSON object (HTTP {status}): {str(data)[:120]}", retryable=False
        )
    return data


async def post_json(
    client: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    policy: RetryPolicy,
) -> dict[str, Any]:
    """POST ``body`` and return the JSON reply, retrying as the module docstring says.

    Raises :class:`HTTPFailure` at once for a failure that is not retryable and
    :class:`RetriesExhausted` when every attempt failed with a retryable one.
    """
    retry = 0
    while True:
        try:
            return await _attempt(client, url, body, headers, policy.timeout_s)
        except HTTPFailure as failure:
            if not failure.retryable:
                raise
            if retry >= policy.max_retries:
                raise RetriesExhausted(failure, retry + 1) from failure
            delay = backoff_delay(policy, retry, failure.retry_after_s)
            log.info(
                "%s: %s; retry %d/%d in %.2f s",
                url,
                failure.message,
                retry + 1,
                policy.max_retries,
                delay,
            )
            await asyncio.sleep(delay)
            retry += 1
