"""Errors the server answers with, in the OpenAI error shape.

Every failure becomes ``{"error": {"message", "type", "param", "code"}}`` with
a status a client can act on: 4xx for a bad request, 503 when a backend is
down, 504 on a time-out. A 500 is only ever a bug.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field

from aligntime.errors import ContextLengthError
from aligntime.server.protocol import ErrorDetail, ErrorResponse
from aligntime.server.text import json_bytes


@dataclass(eq=False)  # compared and hashed by identity, as exceptions are
class ApiError(Exception):
    """An error answer: HTTP status plus the OpenAI error fields."""

    status: int
    message: str
    _: KW_ONLY
    type: str = "invalid_request_error"  # the OpenAI field's name
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    """Extra response headers (``Retry-After``)."""

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def body(self) -> ErrorResponse:
        """The OpenAI error object."""
        detail = ErrorDetail(message=self.message, type=self.type, param=self.param, code=self.code)
        return ErrorResponse(error=detail)

    def json_bytes(self) -> bytes:
        """The error body as JSON; never fails, whatever text the message holds."""
        return json_bytes(self.body().model_dump())


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> ApiError:
    """A 400 naming the offending field."""
    return ApiError(400, message, param=param, code=code)


def context_length_exceeded(exc: ContextLengthError) -> ApiError:
    """The client's prompt does not fit the model: a 400, as OpenAI answers it."""
    return ApiError(400, exc.message, param="messages", code="context_length_exceeded")


def _server_error(status: int, code: str, message: str) -> ApiError:
    """Not the client's fault: OpenAI's ``server_error`` type, and a code to act on."""
    return ApiError(status, message, type="server_error", code=code)


def backend_down(message: str) -> ApiError:
    """The generator's backend cannot be reached or failed: a 503."""
    return _server_error(503, "backend_unavailable", message)


def scorer_unavailable(message: str) -> ApiError:
    """A scorer failed and the policy has no gate to fail closed with: a 503."""
    return _server_error(503, "scorer_unavailable", message)


def audit_unavailable(reason: str) -> ApiError:
    """The answer is withheld because its audit row could not be committed."""
    return _server_error(
        503,
        "audit_unavailable",
        f"the audit log could not be written ({reason}), so the answer is withheld",
    )


def shutting_down(seconds: float) -> ApiError:
    """The request was still running when the shutdown grace period ended."""
    return _server_error(
        503,
        "shutting_down",
        f"the server is shutting down and the request did not finish within its "
        f"{seconds:g} s grace period; it was aborted, retry it on another instance",
    )


def client_closed() -> ApiError:
    """The client disconnected before its answer was sent (nginx's 499, for the audit log)."""
    return ApiError(
        499,
        "the client closed the connection before the answer was sent; its work was cancelled",
        code="client_closed_request",
    )


def internal_error() -> ApiError:
    """A bug: nothing about it is told to the client (it is logged)."""
    return _server_error(500, "internal_error", "internal server error")


def timed_out(seconds: float) -> ApiError:
    """The request did not finish in the server's time-out: a 504."""
    return _server_error(
        504,
        "timeout",
        f"the request did not finish within {seconds:g} s; try a smaller n or max_tokens",
    )
