"""Errors the server answers with, in the OpenAI error shape.

Every failure becomes ``{"error": {"message", "type", "param", "code"}}`` with
a status a client can act on: 4xx for a bad request, 503 when a backend is
down, 504 on a time-out. A 500 is only ever a bug.
"""

from __future__ import annotations

import json


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
        return json.dumps(self.body(), ensure_ascii=False).encode()


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> ApiError:
    """A 400 naming the offending field."""
    return ApiError(400, message, param=param, code=code)


def backend_down(message: str) -> ApiError:
    return ApiError(503, message, type="server_error", code="backend_unavailable")


def timed_out(seconds: float) -> ApiError:
    return ApiError(
        504,
        f"the request did not finish within {seconds:g} s; try a smaller n or max_tokens",
        type="server_error",
        code="timeout",
    )
