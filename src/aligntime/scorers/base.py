"""The scorer contract: rate every candidate answer to one request."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, Literal

from pydantic import BaseModel

from aligntime.errors import ScorerError
from aligntime.types import Candidate, Message, RequestAssessment, ScoreDetail

Direction = Literal["higher", "lower"]

Messages = Sequence[Message]
"""A conversation, oldest turn first."""
Candidates = Sequence[Candidate]
"""The candidate answers to one request, in the order they are rated."""
MaybeAssessment = RequestAssessment | None
"""The input gate's verdict on the request, where there is one."""
BatchItem = tuple[Sequence[Message], Sequence[Candidate]]
"""One request's part of a batch: its conversation and the candidates to rate."""


class Scorer(ABC):
    """Rates candidates; one raw value per candidate, in the order given.

    ``direction`` says whether a higher raw value is better ("higher") or worse
    ("lower", e.g. a toxicity probability); ``value_range`` is the (low, high)
    interval raw values fall in, used to normalise them before they are combined.
    Scorers batch over the candidates of a request; :meth:`score_batch` rates several
    requests at once (the server coalesces concurrent requests through it).
    """

    name: str = "scorer"
    Options: ClassVar[type[BaseModel] | None] = None
    """The pydantic model of the options a policy gives this implementation (its keys
    in the policy section); ``None``: it takes none. :func:`aligntime.registry.build`
    validates the keys against it and passes the instance to the constructor."""
    direction: Direction = "higher"
    value_range: tuple[float, float] = (0.0, 1.0)
    reads_assessment: bool = False
    """True when :meth:`score` takes the keyword ``assessment`` (the input gate's verdict
    on the request); the aligner passes it only to scorers that declare this."""
    reports_details: bool = False
    """True when :meth:`score_details` and :meth:`score_request_details` give labels (the
    reasons for a value, e.g. a guard's violated categories), not only the values."""
    rates_alone: bool = True
    """True when a candidate's value does not depend on the other candidates rated with
    it. Only such a scorer may be ``lazy`` in a policy (it rates a subset of the
    candidates); a scorer that compares candidates with each other declares False."""
    options: BaseModel | None = None
    """The validated :attr:`Options` this scorer was made with (None: it takes none);
    a subclass declares its own type (``options: ClassifierOptions``)."""

    def __init__(self, options: BaseModel | None = None, *, name: str | None = None) -> None:
        """``options``: an instance of :attr:`Options` (default: its defaults); ``name``:
        the policy's name for this scorer (default: the class's :attr:`name`)."""
        if self.Options is not None:
            self.options = options if options is not None else self.Options()
        if name is not None:
            self.name = name

    @abstractmethod
    async def score(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        """Return one raw value per candidate. ``messages`` is the user's conversation."""

    async def score_batch(
        self, items: Sequence[BatchItem]
    ) -> Sequence[list[float] | BaseException]:
        """Rate several requests' candidates at once: one list of values per item, in order.

        An item whose scoring failed gets its exception instead of values, so that one
        bad request does not fail the others it was batched with. The default rates the
        items concurrently with :meth:`score` (an engine that batches concurrent calls,
        such as llama.cpp's parallel slots, still sees them together); a scorer with a
        cheaper joint pass (one classifier call over every answer) overrides this.
        """
        if len(items) == 1:
            return [await self.score(*items[0])]
        calls = (self.score(messages, candidates) for messages, candidates in items)
        return list(await asyncio.gather(*calls, return_exceptions=True))

    async def score_request(self, messages: Sequence[Message]) -> float:
        """Rate the request itself, before any answer exists (the input gate calls this).

        ``messages`` is the whole conversation, system turns included. The default
        scores the conversation's :func:`request_views` as if each were an answer and
        keeps the riskiest value, which suits scorers that judge a text on its own (a
        toxicity classifier); scorers with a proper request mode (a guard model asked
        about the user's turn) override it.
        """
        views = request_views(messages)
        values = await self.score(messages, [Candidate(text=t) for t in views])
        known = [v for v in values if v == v]  # a failed view (NaN) does not hide the others
        if not known:
            return float("nan")
        return max(known) if self.direction == "lower" else min(known)

    async def score_details(
        self, messages: Messages, candidates: Candidates, *, assessment: MaybeAssessment = None
    ) -> list[ScoreDetail]:
        """One value per candidate with its labels; the aligner calls this, not :meth:`score`.

        ``assessment`` (the input gate's verdict) reaches :meth:`score` only when the
        scorer declares :attr:`reads_assessment`. The default wraps :meth:`score` with
        no labels; a scorer that declares :attr:`reports_details` overrides this so that
        one model pass gives both.
        """
        verdict = assessment or RequestAssessment()
        values = await score_candidates(self, messages, candidates, verdict)
        return [ScoreDetail(float(v)) for v in values]

    async def score_request_details(self, messages: Sequence[Message]) -> ScoreDetail:
        """:meth:`score_request` with its labels; the input gate calls this.

        The default wraps :meth:`score_request` with no labels.
        """
        return ScoreDetail(float(await self.score_request(messages)))

    def load(self) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Load models ahead of the first request (called from a worker thread)."""

    def close(self) -> None:  # noqa: B027 - optional hook, empty on purpose
        """Release resources."""

    def normalise(self, value: float) -> float:
        """Map a raw value to [0, 1] where 1 is best; a missing (NaN) value is worst."""
        if value != value:  # NaN: the scorer failed for this candidate
            return 0.0
        low, high = self.value_range
        span = high - low
        x = 0.0 if span <= 0 else (value - low) / span
        x = min(1.0, max(0.0, x))
        return x if self.direction == "higher" else 1.0 - x


class SyncScorer(Scorer):
    """A scorer whose work is blocking (a model forward pass, a regex sweep).

    Subclasses implement :meth:`score_sync`; :meth:`score` runs it in a worker
    thread so that several scorers overlap and the event loop stays free.
    """

    @abstractmethod
    def score_sync(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        """Blocking version of :meth:`score`."""

    async def score(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        return await asyncio.to_thread(self.score_sync, messages, candidates)

    async def score_batch(
        self, items: Sequence[BatchItem]
    ) -> Sequence[list[float] | BaseException]:
        """Every item in one worker-thread hop; a failing item gets its exception."""
        return await asyncio.to_thread(self.score_batch_sync, items)

    def score_batch_sync(self, items: Sequence[BatchItem]) -> Sequence[list[float] | BaseException]:
        """Blocking :meth:`score_batch`: :meth:`score_sync` item by item.

        Scorers with a joint forward pass override this (and keep the thread hop).
        """
        results: list[list[float] | BaseException] = []
        for messages, candidates in items:
            try:
                results.append(self.score_sync(messages, candidates))
            except Exception as exc:  # one request's failure must not fail the others
                results.append(exc)
        return results


def split_rows(values: Sequence[float], items: Sequence[BatchItem]) -> list[list[float]]:
    """Cut one flat list of values (every item's candidates in order) back into items."""
    rows, start = [], 0
    for _, candidates in items:
        rows.append([float(v) for v in values[start : start + len(candidates)]])
        start += len(candidates)
    return rows


def as_scorer_error(scorer: Scorer, exc: BaseException) -> ScorerError:
    """``exc`` raised by ``scorer`` as a :class:`ScorerError` that names the scorer."""
    if isinstance(exc, ScorerError):
        return exc
    hint = getattr(exc, "hint", None)
    message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
    return ScorerError(scorer.name, message, hint=hint)


async def score_candidates(
    scorer: Scorer,
    messages: Sequence[Message],
    candidates: Sequence[Candidate],
    assessment: RequestAssessment,
) -> list[float]:
    """Call ``scorer.score``, passing the input gate's verdict only to a scorer that
    declares :attr:`Scorer.reads_assessment` (the others' signature has no such keyword)."""
    if scorer.reads_assessment:
        score = scorer.score  # declared to take the keyword; the base signature cannot say so
        return await score(messages, candidates, assessment=assessment)  # type: ignore[call-arg]
    return await scorer.score(messages, candidates)


REQUEST_CHARS = 2000
"""Default characters of the user's turns that output scorers read as the request."""


def request_text(messages: Sequence[Message], max_chars: int = REQUEST_CHARS) -> str:
    """The request a candidate answers: every user turn, oldest first, blank-line separated.

    Output scorers read all user turns, not only the last one, so that a request split
    over several turns ("I want to hurt someone." ... "How, exactly?") is judged whole.
    Past ``max_chars`` the oldest text is cut (marked with "…"): the latest turns
    matter most. With one user turn this is that turn's text.
    """
    turns = [m.content.strip() for m in messages if m.role == "user"]
    text = "\n\n".join(t for t in turns if t)
    if len(text) <= max_chars:
        return text
    return "…" + text[len(text) - max_chars + 1 :]


def last_user_text(messages: Sequence[Message]) -> str:
    """The request a candidate answers: the content of the last user message."""
    for message in reversed(messages):
        if message.role == "user":
            return message.content
    return ""


def conversation_text(
    messages: Sequence[Message], *, roles: Sequence[str] = ("system", "user", "assistant")
) -> str:
    """The conversation as one text, one ``role: content`` line per turn.

    Request-level scorers read this instead of the last user message alone, so that
    a harmful request split over several turns is still seen whole.
    """
    return "\n".join(f"{m.role}: {m.content}" for m in messages if m.role in roles)


def request_views(messages: Sequence[Message]) -> list[str]:
    """The texts a request-level classifier reads, to keep the riskiest of its estimates
    (each text once): the exchange (every user and assistant turn), its user turns, its
    last user turn, and each system turn on its own.

    A classifier trained on short requests reads a long text as something else: read as
    one text with a deployment's system prompt, a request is diluted by it (behind a
    90-word system prompt the shipped harm gate flagged 49% of the harmful requests of
    ``tests/data/unseen_requests.jsonl`` and ``casual_requests.jsonl`` instead of 99%),
    and a benign one is mistaken (behind a 170-word one it flagged 34% of their benign
    requests instead of 7%). So the operator's system turns are judged on their own, and
    the exchange, with its user turns and its last request, as requests were trained:
    harm split over user turns, or put in an assistant turn the caller wrote, is still
    read with the request.
    """
    exchange = conversation_text(messages, roles=("user", "assistant"))
    users = conversation_text(messages, roles=("user",))
    last = [m for m in messages if m.role == "user"][-1:]
    system = [conversation_text([m]) for m in messages if m.role == "system"]
    views = [exchange, users, conversation_text(last), *system]
    return list(dict.fromkeys(v for v in views if v)) or [conversation_text(messages)]
