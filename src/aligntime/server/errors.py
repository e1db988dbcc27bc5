"""Errors the server answers with, in the OpenAI error shape.

Every failure becomes ``{"error": {"message", "type", "param", "code"}}`` with
a status a client can act on: 4xx for a bad request, 503 when a backend is
down, 504 on a time-out. A 500 is only ever a bug.
"""

from __future__ import annotations

from aligntime.errors import ContextLengthError
from aligntime.server.text import json_bytes


class ApiError(Exception):
    """An error answer: HTTP status plus the OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # the OpenAI field's name
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, dict[str, str | None]]:
        """The OpenAI error object."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def json_bytes(self) -> bytes:
        """The error body as JSON; never fails, whatever text the message holds."""
        return json_bytes(self.body())


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> ApiError:
    """A 400 naming the offending field."""
    return ApiError(400, message, param=param, code=code)


def backend_down(message: str) -> ApiError:
    return ApiError(503, message, type="server_error", code="backend_unavailable")


def context_length_exceeded(exc: ContextLengthError) -> ApiError:
    """The client's prompt does not fit the model: a 400, as OpenAI answers it."""
    return ApiError(400, exc.message, param="messages", code="context_length_exceeded")


def audit_unavailable(reason: str) -> ApiError:
    """The answer is withheld because its audit row could not be committed."""
    return ApiError(
        503,
        f"the audit log could not be written ({reason}), so the answer is withheld",
        type="server_error",
        code="audit_unavailable",
    )


def shutting_down(seconds: float) -> ApiError:
    """The request was still running when the shutdown grace period ended."""
    return ApiError(
        503,
        f"the server is shutting down and the request did not finish within its "
        f"{seconds:g} s grace period; it was aborted, retry it on another instance",
        type="server_error",
        code="shutting_down",
    )


def internal_error() -> ApiError:
    """A bug: nothing about it is told to the client (it is logged)."""
    return ApiError(500, "internal server error", type="server_error", code="internal_error")


def timed_out(seconds: float) -> ApiError:
    return ApiError(
        504,
        f"the request did not finish within {seconds:g} s; try a smaller n or max_tokens",
        type="server_error",
        code="timeout",
    )
