"""One alignment request: the conversation and its per-request settings, in one object.

Every client builds an :class:`AlignRequest`: the keyword methods of
:class:`~aligntime.aligner.Aligner` (``align(prompt, n, max_tokens=...)``), the
server (``ChatCompletionRequest.to_align_request()``) and the CLI. The aligner
checks it once against its policy (:meth:`AlignRequest.checked`); the CLI calls
the same check before any model is downloaded, so a bad ``-n`` fails at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from aligntime.errors import InputError
from aligntime.types import GenerationParams, Message

if TYPE_CHECKING:
    from aligntime.policy.schema import Policy
    from aligntime.structured import ResponseFormat
    from aligntime.tools import ToolSet

Conversation = str | Sequence[Message] | Sequence[dict[str, str]]
"""A prompt string, or chat messages as :class:`Message` objects or ``role``/``content`` dicts."""


class RequestError(InputError):
    """A request setting that cannot be served; ``field`` names it (``n``, ``messages``, ...).

    Clients name the field in their own words: the CLI as ``--max-tokens``, the
    server as the JSON parameter.
    """

    def __init__(self, field: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.field = field


def to_messages(conversation: Conversation) -> list[Message]:
    """Normalise a prompt string or a list of messages (objects or dicts)."""
    if isinstance(conversation, str):
        messages = [Message("user", conversation)]
    else:
        messages = []
        for item in conversation:
            if isinstance(item, Message):
                messages.append(item)
            elif isinstance(item, dict) and item.get("role") in ("system", "user", "assistant"):
                messages.append(Message(item["role"], str(item.get("content") or "")))  # type: ignore[arg-type]
            else:
                raise RequestError("messages", f"not a chat message: {item!r}")
    check_messages(messages)
    return messages


def check_messages(messages: Sequence[Message]) -> None:
    """Refuse a conversation without a user message that says something."""
    if not any(m.role == "user" and m.content.strip() for m in messages):
        raise RequestError(
            "messages",
            "the prompt is empty: the conversation has no non-empty user message",
            hint="give a non-empty request",
        )


@dataclass(frozen=True)
class AlignRequest:
    """A conversation to answer, and the settings this request overrides.

    ``None`` (and an empty ``stop`` in ``params``) leaves the policy's setting in force.
    """

    messages: list[Message]
    """The conversation; its last user message is the request."""
    n: int | None = None
    """Candidates to sample (the policy's ``n`` when ``None``)."""
    template: str | None = None
    """One of the policy's prompt templates (its default when ``None``)."""
    params: GenerationParams = field(default_factory=GenerationParams)
    """Sampling settings for this request: ``max_tokens``, ``temperature``, ``top_p``,
    ``seed``, ``stop``."""
    response_format: ResponseFormat | dict[str, Any] | None = None
    """The shape every answer must have, as OpenAI's ``response_format`` object
    (``{"type": "json_object"}`` or ``{"type": "json_schema", "json_schema": {"name": ...,
    "schema": {...}}}``) or a :class:`~aligntime.structured.ResponseFormat`. The backend
    is asked for it where it can constrain decoding, and an answer that is not valid
    JSON, or breaks the schema, fails the gate ``response_format``."""
    tools: ToolSet | list[dict[str, Any]] | None = None
    """Functions the answer may call, as OpenAI's ``tools`` list (``tool_choice`` beside
    it) or a :class:`~aligntime.tools.ToolSet`. An answer's calls are checked (known
    names, arguments valid against each function's ``parameters``): the gate ``tools``."""
    tool_choice: str | dict[str, Any] | None = None
    """OpenAI's ``tool_choice``: ``none``, ``auto`` (the default), ``required`` or one
    function (``{"type": "function", "function": {"name": ...}}``)."""

    def checked(self, policy: Policy) -> AlignRequest:
        """This request with ``n`` resolved, once every setting is known to be servable.

        Raises :class:`RequestError` naming the first setting the policy cannot serve.
        """
        check_messages(self.messages)
        n = policy.n if self.n is None else self.n
        if not 1 <= n <= policy.max_n:
            raise RequestError(
                "n",
                f"n must be between 1 and {policy.max_n} for policy {policy.name!r}, got {n}",
                hint="raise max_n in the policy to allow more",
            )
        if self.params.max_tokens is not None and self.params.max_tokens < 1:
            raise RequestError(
                "max_tokens", f"max_tokens must be at least 1, got {self.params.max_tokens}"
            )
        check_sampling(self.params)
        params = shaped(self)
        if self.template is not None and self.template not in policy.prompt.templates:
            from aligntime.registry import suggest

            names = sorted(policy.prompt.templates)
            raise RequestError(
                "template",
                f"unknown template {self.template!r} for policy {policy.name!r}; "
                f"templates: {', '.join(names) or 'none'}",
                hint=suggest(self.template, names) if names else "this policy defines no templates",
            )
        return replace(
            self,
            n=n,
            params=params,
            response_format=params.response_format,
            tools=params.tools,
            tool_choice=None,
        )


def shaped(request: AlignRequest) -> GenerationParams:
    """The request's sampling settings, with the shape it asks for (``response_format``,
    ``tools``) read and checked; raises :class:`RequestError` naming the field at fault."""
    from aligntime.structured import ResponseFormat
    from aligntime.tools import ToolSet

    params = request.params
    if request.response_format is not None:
        params = replace(params, response_format=ResponseFormat.parse(request.response_format))
    if request.tools is not None or request.tool_choice is not None:
        given = request.tools
        if isinstance(given, ToolSet):
            if request.tool_choice is not None:
                given = ToolSet.parse([t.to_openai() for t in given.tools], request.tool_choice)
        else:
            given = ToolSet.parse(given, request.tool_choice)
        params = replace(params, tools=given)
    return params


def reseeded(params: GenerationParams, sampled: int) -> GenerationParams:
    """The sampling settings of the round after one that brought the pool to ``sampled``.

    With a fixed seed every round moves it on, so later rounds add new samples
    instead of repeating the first round's: candidate k of the request is seeded
    as the generators seed their k-th candidate (:func:`seed_at`).
    """
    from aligntime.generators.options import seed_at

    if params.seed is None:
        return params
    return replace(params, seed=seed_at(params.seed, sampled))


def check_sampling(params: GenerationParams) -> None:
    """Refuse sampling settings outside the range a policy's generator allows.

    The library checks them here, once, so that every client (the CLI, the server,
    a direct caller) gets the same clear error instead of a backend's.
    """
    from aligntime.generators.options import SamplingOptions

    given = {
        k: v
        for k, v in (("temperature", params.temperature), ("top_p", params.top_p))
        if v is not None
    }
    for name, value in given.items():
        if not math.isfinite(value):
            raise RequestError(name, f"{name} must be a finite number, got {value}")
    try:  # the bounds of a policy's generator.temperature and generator.top_p
        SamplingOptions(model="-", **given)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = ".".join(str(p) for p in error["loc"])
        raise RequestError(name, f"{name}: {error['msg']}, got {given[name]:g}") from None
