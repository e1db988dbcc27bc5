"""Request → Plan: a chat completion checked against the served policy and the server's limits.

Everything a client got wrong is found here, before any model runs, and
answered with a 4xx that names the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from aligntime import registry
from aligntime.aligner import Aligner, build
from aligntime.errors import ConfigError
from aligntime.policy.schema import Policy
from aligntime.request import AlignRequest, RequestError, shaped
from aligntime.server.config import Right, ServerOptions
from aligntime.server.errors import ApiError, bad_request
from aligntime.server.protocol import ChatCompletionRequest
from aligntime.server.security import forbidden
from aligntime.server.text import find_lone_surrogate


@dataclass
class Served:
    """One policy the server answers for, under its name."""

    policy: Policy
    aligner: Aligner
    created: int
    gated: frozenset[str]
    """Scorers with a gate: when one of them fails, the request fails closed."""
    inputs: frozenset[str] = frozenset()
    """The input gate's scorers: when one of them fails, the request is refused."""
    variants: dict[str, Aligner] = field(default_factory=dict)
    """Per-request strategy overrides, sharing the generator and scorers."""

    @classmethod
    def of(cls, aligner: Aligner, created: int) -> Served:
        """``aligner``'s policy, with the scorers whose failure decides the answer."""
        policy = aligner.policy
        gated = frozenset(s.name for s in policy.scorers if s.gate is not None)
        inputs = frozenset(r.name for r in aligner.gate.rules) if aligner.gate else frozenset()
        return cls(policy, aligner, created, gated, inputs)


@dataclass(frozen=True)
class Plan:
    """A validated request, ready for the Aligner."""

    served: Served
    aligner: Aligner
    """The served Aligner, or its variant with the strategy the request named."""
    request: AlignRequest
    """What to align, ``n`` resolved within the policy's and the server's limits."""
    return_candidates: bool = False
    """Send every candidate (asked for, and the key holds the ``candidates`` right)."""
    reveal_failed: bool = False
    """Send the text of candidates that failed a gate too (the ``audit`` right);
    otherwise it is withheld and only their scores are sent."""
    choices: int = 1
    """Choices to return (OpenAI ``n``): the answer, then next-best eligible candidates."""


_API_FIELDS = {"n": "best_of", "template": "aligntime.template"}
"""Where a field of :class:`AlignRequest` comes from in a chat completion request."""


def plan(
    req: ChatCompletionRequest,
    served: Mapping[str, Served],
    options: ServerOptions,
    rights: frozenset[Right] = frozenset(),
) -> Plan:
    """Validate a request against the served policy, the server's limits and the caller's
    ``rights`` (4xx)."""
    check_text(req)
    found = _served(req.model, served)
    ext = req.aligntime
    wanted = bool(ext and ext.return_candidates)
    if wanted and "candidates" not in rights:
        # Every sample of a request, unsafe ones included, is what best-of-N jailbreaks need.
        raise forbidden(
            "candidates",
            "this API key may not receive candidates (aligntime.return_candidates)",
            param="aligntime.return_candidates",
        )
    if req.logprobs:
        raise bad_request("logprobs are not supported by aligntime", param="logprobs")
    if req.continue_final_message:
        raise bad_request(
            "continue_final_message is not supported by aligntime: it aligns whole answers",
            param="continue_final_message",
        )
    request = req.to_align_request()
    try:
        request = replace(request, params=shaped(request), tool_choice=None)
    except RequestError as exc:
        raise bad_request(exc.message, param=exc.field) from None
    request = replace(
        request, response_format=request.params.response_format, tools=request.params.tools
    )
    policy = found.policy
    n = request.n or policy.n  # candidates sampled
    limit = min(policy.max_n, options.max_n)
    sampled_by = "aligntime.n" if ext and ext.n is not None else "best_of"
    if n > limit:
        raise bad_request(
            f"{sampled_by} must be at most {limit} for model {policy.name!r}, got {n}",
            param=sampled_by,
        )
    choices = req.n or 1
    if choices > limit:
        raise bad_request(
            f"n must be at most {limit} for model {policy.name!r}, got {choices}",
            param="n",
        )
    if choices > n:
        raise bad_request(
            f"n (choices returned, {choices}) must be at most the candidates sampled, {n} "
            f"({sampled_by if request.n else 'the policy default'}); raise best_of",
            param="n",
        )
    max_tokens = request.params.max_tokens
    if max_tokens is not None and max_tokens > options.max_tokens:
        raise bad_request(
            f"max_tokens must be at most {options.max_tokens}, got {max_tokens}",
            param="max_tokens",
        )
    try:
        # The request object's own checks (a user message that says something, n, the
        # template ...), with the server's limits above already applied.
        request.checked(policy)
    except RequestError as exc:
        raise bad_request(exc.message, param=_API_FIELDS.get(exc.field, exc.field)) from None
    aligner = found.aligner
    if ext and ext.strategy and ext.strategy != policy.strategy.kind:
        aligner = variant(found, ext.strategy)
    check_shape(request, aligner, early=bool(req.stream and ext and ext.stream_mode == "early"))
    return Plan(found, aligner, replace(request, n=n), wanted, "audit" in rights, choices)


def check_shape(request: AlignRequest, aligner: Aligner, *, early: bool) -> None:
    """Refuse ``response_format`` or ``tools`` where they cannot be honoured (400 naming the
    field): a backend that cannot constrain its answers to them, or a way of writing
    answers in pieces (a search strategy, stream-while-selecting), which no grammar
    spans and whose windows are released before the JSON is whole."""
    from aligntime.strategies.base import SearchStrategy

    params = request.params
    given = [
        name
        for name, value in (("response_format", params.response_format), ("tools", params.tools))
        if value is not None
    ]
    if not given:
        return
    generator = aligner.generator
    able = generator.capabilities
    for name in given:
        if not (able.response_format if name == "response_format" else able.tools):
            raise bad_request(
                f"{name} is not supported by the {generator.name!r} backend of this model",
                param=name,
            )
    first = given[0]
    if isinstance(aligner.strategy, SearchStrategy):
        raise bad_request(
            f"{first} cannot be used with strategy {aligner.strategy.name!r}: it writes answers "
            "in steps, which a response format or tool grammar does not span; use a sampling "
            "strategy (aligntime.strategy, e.g. best_of_n)",
            param=first,
        )
    if early:
        raise bad_request(
            f"{first} cannot be used with aligntime.stream_mode 'early': an answer's shape is "
            "known only once it is whole; use stream_mode 'whole'",
            param=first,
        )


def variant(served: Served, kind: str) -> Aligner:
    """The served Aligner with another strategy (default options), built once."""
    found = served.variants.get(kind)
    if found is not None:
        return found
    try:
        strategy = build("strategy", kind, {})
    except Exception as exc:  # unknown name, or a strategy that needs options
        choices = registry.suggest(kind, list(registry.available("strategy")))
        reason = exc.message if isinstance(exc, ConfigError) else "it needs options"
        raise bad_request(
            f"unknown or unusable strategy {kind!r}: {reason}; {choices}",
            param="aligntime.strategy",
        ) from exc
    base = served.aligner
    made = Aligner(
        served.policy,
        generator=base.generator,
        scorers=base.scorers,
        strategy=strategy,
        # The loaded input scorers too: a variant must not load their models again.
        input_scorers=base.gate.scorers if base.gate else None,
    )
    served.variants[kind] = made
    return made


def check_text(req: ChatCompletionRequest) -> None:
    """Refuse text that no encoder takes further (a lone surrogate) with a 400 naming it."""
    hit = find_lone_surrogate(req.model_dump(exclude_none=True))
    if hit is not None:
        where, index, char = hit
        raise bad_request(
            f"{where or 'the request'}: the text holds a lone UTF-16 surrogate "
            f"(U+{ord(char):04X}) at character {index}; send valid Unicode",
            param=where or None,
            code="invalid_value",
        )


def _served(model: str, served: Mapping[str, Served]) -> Served:
    found = served.get(model)
    if found is None:
        raise ApiError(
            404,
            f"the model {model!r} does not exist; this server serves: " + ", ".join(sorted(served)),
            param="model",
            code="model_not_found",
        )
    return found
