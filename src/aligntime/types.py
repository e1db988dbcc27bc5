"""Plain data types shared by every part of aligntime.

They are frozen dataclasses: a pipeline stage that wants to add information
(a scorer adding scores, the combiner adding the combined score) returns a new
object with :func:`dataclasses.replace` instead of mutating one it was given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from aligntime.structured import ResponseFormat
    from aligntime.tools import ToolSet

Role = Literal["system", "user", "assistant", "tool"]
"""``tool``: a tool's result, answering an assistant message's ``tool_calls``."""
CandidateState = Literal["complete", "partial", "rejected"]
"""Where a candidate stands in a search; separate from the backend's ``finish_reason``."""


@dataclass(frozen=True)
class ToolCall:
    """One call of a tool (a function) that an answer makes, in OpenAI's terms."""

    name: str
    """The tool's (function's) name."""
    arguments: str
    """The arguments as the model wrote them: a JSON object's text (not yet checked)."""
    id: str = ""
    """The call's id, which the ``tool`` message with its result names."""

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI ``tool_calls`` entry."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True)
class Message:
    """One chat message."""

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    """An assistant message's calls of tools (its ``content`` may then be empty)."""
    tool_call_id: str | None = None
    """A ``tool`` message's answer to this call id."""

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}

    def to_chat(self) -> dict[str, Any]:
        """The OpenAI chat message: :meth:`to_dict`, with the tool fields when set."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.to_dict() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


@dataclass(frozen=True)
class Candidate:
    """One sampled answer, with its scores once scorers have run.

    ``scores`` holds each scorer's raw value (in the scorer's own range and
    direction); ``score`` is the combined, normalised value used for ranking;
    ``passed`` is False when any safety gate failed; ``gate_failures`` names the
    gates that failed.
    """

    text: str
    tokens: int = 0
    finish_reason: str = "stop"
    scores: dict[str, float] = field(default_factory=dict)
    score: float | None = None
    passed: bool = True
    gate_failures: tuple[str, ...] = ()
    logprob: float | None = None
    """Sum of the sampled tokens' log-probabilities, where the backend reports them."""
    state: CandidateState = "complete"
    """``complete`` (the backend ended it: see ``finish_reason``), ``partial`` (still being
    written by a search strategy) or ``rejected`` (a search strategy dropped it unfinished;
    it stays in the result for audit and is never chosen)."""
    origin: str = "sampled"
    """Where the text came from: ``sampled`` (the generator), ``refusal`` (the input
    gate's refusal text, offered as one more candidate for a steered request and scored
    like the others) or ``referral`` (the gate's referral to qualified help, offered
    likewise to a request that needs a professional's advice)."""
    tool_calls: tuple[ToolCall, ...] = ()
    """The tools this answer calls (a request that offered ``tools``); ``text`` is then
    whatever the model wrote beside the calls, often nothing."""

    def to_dict(self) -> dict[str, Any]:
        """One candidate in the ``run --json`` contract (see the README)."""
        return {
            "text": self.text,
            "score": self.score,
            "scores": dict(self.scores),
            "passed": self.passed,
            "tokens": self.tokens,
            # Only for the input gate's offered refusal or referral: the contract's five
            # keys stay as they are for every sampled answer.
            **({"origin": self.origin} if self.origin != "sampled" else {}),
        }

    def to_record(self) -> dict[str, Any]:
        """Every field as JSON-ready values; :meth:`from_record` reads them back.

        The one form of a candidate wherever it is written down: results lines,
        batch rows, the server's ``candidates``, audit rows. It is strict JSON: a
        failed scorer's NaN (or any value that is not a finite number) is ``None``.
        """
        return {
            "text": self.text,
            "tokens": self.tokens,
            "finish_reason": self.finish_reason,
            "scores": {k: _finite(v) for k, v in self.scores.items()},
            "score": _finite(self.score),
            "passed": self.passed,
            "gate_failures": list(self.gate_failures),
            "logprob": self.logprob,
            "state": self.state,
            "origin": self.origin,
            # Only when there are some: records of answers without calls stay as they were.
            **({"tool_calls": [c.to_dict() for c in self.tool_calls]} if self.tool_calls else {}),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Candidate:
        """A candidate from :meth:`to_record`'s form; a key that is missing (a record
        written by an older aligntime) takes the field's default."""
        scores = record.get("scores") or {}
        return cls(
            text=str(record["text"]),
            tokens=int(record.get("tokens") or 0),
            finish_reason=str(record.get("finish_reason") or "stop"),
            scores={k: math.nan if v is None else float(v) for k, v in scores.items()},
            score=record.get("score"),
            passed=bool(record.get("passed", True)),
            gate_failures=tuple(record.get("gate_failures") or ()),
            logprob=record.get("logprob"),
            state=record.get("state") or "complete",
            origin=str(record.get("origin") or "sampled"),
            tool_calls=tuple(
                ToolCall(
                    str(c["function"]["name"]),
                    str(c["function"]["arguments"]),
                    str(c.get("id") or ""),
                )
                for c in record.get("tool_calls") or ()
            ),
        )


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def rank_key(candidate: Candidate) -> tuple[bool, float]:
    """How candidates rank, the best highest: those that passed every gate first,
    then by combined score; a missing or NaN score ranks below every number.

    Use it with ``max`` (ties keep the earliest) or ``sorted(..., reverse=True)``.
    """
    score = candidate.score
    return candidate.passed, -math.inf if score is None or math.isnan(score) else score


@dataclass(frozen=True)
class ScoreDetail:
    """One scorer's value for one text, with the labels it gave as reasons.

    ``labels`` name what the scorer found, e.g. the categories a guard model says
    were violated ("S1 Violent Crimes"); a failed gate names them, so a user sees why
    an answer (or the request) was rejected. Scorers that only give a number leave
    them empty.
    """

    value: float
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Usage:
    """Tokens read and written by the generator for one request (all candidates)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )

    def to_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


@dataclass(frozen=True)
class Timings:
    """Wall-clock seconds spent in each stage of one request."""

    generate_s: float = 0.0
    score_s: float = 0.0
    total_s: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return {
            "generate_s": round(self.generate_s, 4),
            "score_s": round(self.score_s, 4),
            "total_s": round(self.total_s, 4),
        }


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings for one generation call.

    ``None`` means "use the generator's configured default".
    """

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    response_format: ResponseFormat | None = None
    """The shape every answer must have (JSON, or JSON matching a schema); ``None``: text.
    Backends that constrain decoding pass it on (a grammar); each candidate is checked."""
    tools: ToolSet | None = None
    """Tools the answer may call, and the request's ``tool_choice``; ``None``: no tools."""


@dataclass(frozen=True)
class Generation:
    """What a generator returns for one call: the candidates and the token usage."""

    candidates: list[Candidate]
    usage: Usage


@dataclass(frozen=True)
class RequestAssessment:
    """The input gate's verdict on a request, made before any candidate is sampled.

    ``action`` is what the gate did: ``pass`` (sample as usual), ``steer`` (sample
    under a stricter template or extra principles) or ``refuse`` (no sampling: the
    fallback is returned). ``scores`` holds each input scorer's raw value;
    ``decided_by`` names the scorer whose threshold chose the action; ``harm`` is the
    request's estimated probability of being harmful (0..1) when an input scorer
    provides one, so output scorers can reward refusals of harmful requests and
    penalise refusals of benign ones.
    """

    action: Literal["pass", "steer", "refuse"] = "pass"
    scores: dict[str, float] = field(default_factory=dict)
    decided_by: str | None = None
    harm: float | None = None
    failed: tuple[str, ...] = ()
    """Input scorers that failed (``on_scorer_error: degrade``); any failure refuses."""
    seconds: float = 0.0
    """Wall-clock seconds the input gate took."""
    labels: tuple[str, ...] = ()
    """What the deciding scorer named as its reasons (e.g. a guard's violated categories)."""
    advice: float | None = None
    """The request's estimated probability of needing a qualified professional (medical,
    mental-health, legal or financial advice about the user's own situation), when an
    input scorer gives one (``advice: true``); output scorers that read the assessment
    then prefer an answer that refers the user to such help."""
    steer: str | None = None
    """The named steer (``input.steers``) a steered request was sampled under; ``None``:
    the section's ``steer``."""

    def to_dict(self) -> dict[str, Any]:
        """The ``input`` object of the JSON contract; a failed scorer's value is null.

        ``advice`` and ``steer`` appear only when set, so a policy without an advice
        scorer or named steers writes the object it always did."""
        extra: dict[str, Any] = {}
        if self.advice is not None:
            extra["advice"] = self.advice
        if self.steer is not None:
            extra["steer"] = self.steer
        return {
            "action": self.action,
            "scores": {k: None if v != v else v for k, v in self.scores.items()},
            "decided_by": self.decided_by,
            "harm": self.harm,
            "failed": list(self.failed),
            "seconds": round(self.seconds, 4),
            "labels": list(self.labels),
            **extra,
        }


@dataclass(frozen=True)
class Result:
    """The outcome of one alignment request.

    ``best`` indexes into ``candidates`` and is ``None`` when no candidate was
    eligible; then ``fallback`` holds the policy's fallback text. When the input
    gate refused the request there are no candidates and ``fallback`` holds the
    refusal; ``input`` is the gate's verdict (``None`` for a policy without a gate).
    """

    prompt: str
    policy: str
    messages: list[Message]
    candidates: list[Candidate]
    best: int | None
    fallback: str | None
    usage: Usage
    timings: Timings
    strategy: str = "best_of_n"
    input: RequestAssessment | None = None
    """The input gate's verdict on the request; ``None`` when the policy has no gate."""

    @property
    def refused(self) -> bool:
        """Whether the input gate refused the request (nothing was sampled)."""
        return self.input is not None and self.input.action == "refuse"

    @property
    def text(self) -> str:
        """What the user should see: the chosen candidate, else the fallback."""
        if self.best is not None:
            return self.candidates[self.best].text
        return self.fallback or ""

    @property
    def chosen(self) -> Candidate | None:
        return self.candidates[self.best] if self.best is not None else None

    def to_dict(self) -> dict[str, Any]:
        """The ``run --json`` contract (README, "What aligntime run shows")."""
        return {
            "prompt": self.prompt,
            "policy": self.policy,
            "best": self.best,
            "fallback": self.fallback,
            "candidates": [c.to_dict() for c in self.candidates],
            "usage": self.usage.to_dict(),
            "timings": self.timings.to_dict(),
            "input": self.input.to_dict() if self.input is not None else None,
        }
