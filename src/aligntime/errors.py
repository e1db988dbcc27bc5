"""Errors a user can act on.

Every error that reaches the command line is an :class:`AligntimeError`: its
message says what was wrong and where, and ``hint`` says what to do about it.
The CLI prints ``error: <message>`` (and the hint) on one or two lines and exits
with code 2; anything else is a bug and shows a traceback only with ``--debug``.
"""

from __future__ import annotations


class AligntimeError(Exception):
    """Base class of the errors aligntime raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class ConfigError(AligntimeError):
    """A policy file, preset or option is malformed or names something unknown."""


class InputError(AligntimeError):
    """A request is invalid: an empty prompt, an out-of-range N, ..."""


class ContextLengthError(InputError):
    """The conversation does not fit the model's context window: the caller's to shorten.

    ``prompt_tokens`` (what the request needed) and ``context_tokens`` (what the
    model holds) are the backend's counts, ``None`` where it did not say.
    """

    def __init__(
        self,
        message: str,
        *,
        prompt_tokens: int | None = None,
        context_tokens: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.prompt_tokens = prompt_tokens
        self.context_tokens = context_tokens


class ModelError(AligntimeError):
    """A model is missing, corrupt or cannot be fetched."""


class BackendError(AligntimeError):
    """A generator backend failed while serving a request.

    ``status`` is the HTTP status of the backend's last reply when it answered with
    one (e.g. 401, 404, 429, 503), and ``None`` when there was no reply at all
    (connection refused, time-out) or the backend is not an HTTP one.
    """

    def __init__(self, message: str, *, hint: str | None = None, status: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


class ScorerError(AligntimeError):
    """A scorer failed while scoring candidates."""

    def __init__(self, scorer: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(f"scorer {scorer!r} failed: {message}", hint=hint)
        self.scorer = scorer
