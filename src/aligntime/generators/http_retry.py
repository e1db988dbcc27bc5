"""POST a JSON body through the official ``openai`` client and read a JSON reply.

The client (``openai.AsyncOpenAI``) owns the round trip and its retries: it
honours ``Retry-After``, ``retry-after-ms`` and ``x-should-retry``, takes proxy
settings from the environment, and retries what can pass:

- 408, 409, 429 and every 5xx, whatever the body (proxies answer 502/503 with HTML):
  the server is slow, overloaded or restarting; the same request can succeed later.
- Connection errors, timeouts and a connection dropped mid-response: the request
  may never have reached a healthy worker, or its reply was lost on the way.

What aligntime adds around it:

- a limit on each *whole* attempt (``timeout_s``): the client's timeouts are per
  socket operation, so a server that trickles bytes could otherwise hold a
  request forever;
- its own backoff (``backoff_s`` doubling up to ``max_backoff_s``, with jitter),
  with a server's Retry-After capped at ``max_backoff_s``;
- replies read as plain JSON, so servers that add or omit fields still work, and
  a 200 whose body is not a JSON object fails at once (a server that answers a
  well-formed request with garbage does so deterministically: not retried);
- failures as :class:`HTTPFailure` / :class:`RetriesExhausted` with the server's
  own message and the number of attempts made.

Not retried: any other 4xx (a bad key, an unknown model, a rejected parameter).
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import json
import logging
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import httpx2
import openai
from pydantic import AfterValidator

log = logging.getLogger(__name__)


def _http_base_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"base_url must start with http:// or https://, got {value!r}")
    return value.rstrip("/")


BaseURL = Annotated[str, AfterValidator(_http_base_url)]
"""An option naming a server's root URL: http(s) only, without a trailing slash."""


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


def server_error_message(response: httpx2.Response) -> str:
    """The human-readable part of an error reply (OpenAI's ``{"error": {"message"}}`` shape)."""
    try:
        data = json.loads(response.content)
    except ValueError:
        return response.text.strip()[:300]
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data))
        if isinstance(err, dict):
            return str(err.get("message") or err)[:300]
        return str(err)[:300]
    return str(data)[:300]


class _Attempts:
    """Attempts made for one logical request (the client retries inside one call)."""

    def __init__(self) -> None:
        self.count = 0


_attempts: contextvars.ContextVar[_Attempts | None] = contextvars.ContextVar(
    "aligntime_http_attempts", default=None
)


class _WholeAttemptLimit(httpx2.AsyncClient):
    """An HTTP client whose every send, the whole body read included, has a deadline."""

    def __init__(self, *, attempt_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.attempt_timeout_s = attempt_timeout_s

    async def send(self, request: httpx2.Request, **kwargs: Any) -> httpx2.Response:
        counter = _attempts.get()
        if counter is not None:
            counter.count += 1
        try:
            return await asyncio.wait_for(
                self._send_whole(request, **kwargs), timeout=self.attempt_timeout_s
            )
        except asyncio.TimeoutError as exc:
            # A timeout of the client's own kind, so that the client retries it.
            raise httpx2.ReadTimeout(
                f"no reply within {self.attempt_timeout_s:g} s", request=request
            ) from exc

    async def _send_whole(self, request: httpx2.Request, **kwargs: Any) -> httpx2.Response:
        response = await super().send(request, **kwargs)
        await response.aread()
        return response


class OpenAIClient(openai.AsyncOpenAI):
    """The official client with aligntime's backoff between retries."""

    def __init__(self, *, policy: RetryPolicy, **kwargs: Any) -> None:
        super().__init__(max_retries=policy.max_retries, **kwargs)
        self.retry_policy = policy

    # The client's hook for the wait before a retry; its own schedule starts at 0.5 s
    # and has no per-deployment setting.
    def _calculate_retry_timeout(
        self,
        remaining_retries: int,
        options: Any,
        response_headers: httpx2.Headers | None = None,
    ) -> float:
        retry = max(self.max_retries - remaining_retries, 0)
        return backoff_delay(self.retry_policy, retry, retry_after_header(response_headers))


def make_client(
    base_url: str, policy: RetryPolicy, *, connect_timeout_s: float, max_connections: int
) -> OpenAIClient:
    """A client for one event loop: its connections belong to the loop that opened them."""
    timeout = httpx2.Timeout(policy.timeout_s, connect=connect_timeout_s)
    http = _WholeAttemptLimit(
        attempt_timeout_s=policy.timeout_s,
        timeout=timeout,
        limits=httpx2.Limits(max_connections=max_connections),
        follow_redirects=True,
    )
    # The key travels in each request's headers (or is omitted there), so the
    # client's own key is a placeholder that is never sent.
    return OpenAIClient(
        policy=policy, api_key="unused", base_url=base_url, timeout=timeout, http_client=http
    )


def retry_after_header(headers: Mapping[str, str] | None) -> float | None:
    """A reply's requested wait in seconds: ``retry-after-ms``, else ``Retry-After``."""
    if not headers:
        return None
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            value = float(millis) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value):
            return max(value, 0.0)
    return parse_retry_after(headers.get("retry-after"))


def _retryable(response: httpx2.Response) -> bool:
    """Whether the client retried (or, with retries left, would retry) this reply."""
    should = response.headers.get("x-should-retry")
    if should in ("true", "false"):
        return should == "true"
    status = response.status_code
    return status in (408, 409, 429) or status >= 500


def _status_failure(response: httpx2.Response) -> HTTPFailure:
    status = response.status_code
    message = server_error_message(response)
    retryable = _retryable(response)
    return HTTPFailure(
        f"HTTP {status}: {message or response.reason_phrase}",
        retryable=retryable,
        status=status,
        server_message=message,
        retry_after_s=retry_after_header(response.headers) if retryable else None,
    )


async def post_json(
    client: openai.AsyncOpenAI,
    url: str,
    body: dict[str, Any],
    headers: Mapping[str, str],
    policy: RetryPolicy,
) -> dict[str, Any]:
    """POST ``body`` to ``url`` (absolute, or relative to the client's base URL).

    Returns the JSON reply. Raises :class:`HTTPFailure` at once for a failure that
    is not retryable and :class:`RetriesExhausted` when every attempt failed with a
    retryable one, as the module docstring says. ``headers`` without an
    ``Authorization`` entry send no key at all.
    """
    counter = _Attempts()
    token = _attempts.set(counter)
    request_headers: dict[str, Any] = {"Authorization": openai.Omit(), **headers}
    try:
        response = await client.post(
            url,
            cast_to=httpx2.Response,
            body=body,
            options={"headers": request_headers, "max_retries": policy.max_retries},
        )
    except openai.APIStatusError as exc:
        failure = _status_failure(exc.response)
        if failure.retryable:
            raise RetriesExhausted(failure, max(counter.count, 1)) from exc
        raise failure from exc
    except openai.APIConnectionError as exc:
        cause = exc.__cause__
        if isinstance(exc, openai.APITimeoutError) or isinstance(cause, httpx2.TimeoutException):
            message = f"no reply within {policy.timeout_s:g} s"
        else:
            message = f"connection failed ({type(cause or exc).__name__}: {cause or exc})"
        failure = HTTPFailure(message, retryable=True)
        raise RetriesExhausted(failure, max(counter.count, 1)) from exc
    finally:
        _attempts.reset(token)
    status = response.status_code
    try:
        data = json.loads(response.content)
    except ValueError as exc:
        raise HTTPFailure(
            f"the reply is not JSON (HTTP {status}): {response.text[:120]!r}", retryable=False
        ) from exc
    if not isinstance(data, dict):
        raise HTTPFailure(
            f"the reply is not a JSON object (HTTP {status}): {str(data)[:120]}", retryable=False
        )
    return data
