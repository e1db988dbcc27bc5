"""Stream while selecting: choose one answer early, then release it window by window.

Whole-answer selection (``best_of_n`` and the rest) shows nothing until every
candidate is written and scored. :class:`EarlyAnswer` answers sooner:

1. the input gate assesses the request first, as always (a refused request gets
   the refusal, and nothing is sampled);
2. the request's N answers are started, and every ``chunk_tokens`` tokens the
   partial answers are scored with the policy's scorers; the best ``keep`` share
   goes on (early rejection, as :mod:`aligntime.strategies.early_rejection`), or at
   once the best one that passed every gate and reaches ``threshold`` (``adaptive``'s
   rule), until one survivor remains;
3. the survivor's text so far passed every gate when it was chosen, so it is
   released at once; the rest streams through a :class:`WindowGate`: new text is
   held until ``window_tokens`` tokens have gathered, then the answer up to the
   end of that window is checked by the gating scorers, and only a window that
   passed is released. The complete answer is scored by every scorer before its
   last window goes out.

When a window fails (or a gating scorer fails: fail closed), nothing more of the
answer is released: the result has no chosen candidate, ``blocked`` is set, and
the caller ends the answer with the policy's fallback notice. :attr:`EarlyAnswer.sent`
is exactly the text released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from aligntime.aligner import Aligner
from aligntime.errors import ScorerError
from aligntime.request import AlignRequest
from aligntime.scorers.combine import combine
from aligntime.strategies.adaptive import Adaptive
from aligntime.strategies.base import COMPLETE, PARTIAL, REJECTED, SearchContext, Strategy
from aligntime.strategies.early_rejection import EarlyRejection
from aligntime.strategies.rejection import reaches
from aligntime.types import (
    Candidate,
    Generation,
    Message,
    RequestAssessment,
    Result,
    ScoreDetail,
    rank_key,
)

log = logging.getLogger(__name__)

WindowCheck = Callable[[Candidate], Awaitable[Candidate]]
"""Scores an answer (partial or complete) and says whether it passed every gate."""


@dataclass(frozen=True)
class EarlyStreamOptions:
    """How :class:`EarlyAnswer` selects and how much text one gate check covers."""

    chunk_tokens: int = 16
    """Tokens written between two checks of the partial answers while selecting."""
    keep: float = 0.2
    """Share of the partial answers kept at each check (rounded up; one at least). Each
    check delays the first text, so the default keeps a fifth: at N = 5, one check."""
    window_tokens: int = 16
    """Tokens the output gate checks at once; no text goes out before its window passed."""
    threshold: float | None = None
    """A partial answer that passed every gate and reaches this combined score is the
    survivor at once (``adaptive``'s threshold); ``None``: prune down to one."""

    @classmethod
    def for_strategy(
        cls, strategy: Strategy, **overrides: int | float | None
    ) -> EarlyStreamOptions:
        """The options a policy's strategy implies: ``early_rejection``'s ``chunk_tokens``
        and ``keep``, ``adaptive``'s ``threshold``; the defaults otherwise."""
        found: dict[str, int | float | None] = {}
        if isinstance(strategy, EarlyRejection):
            found = {"chunk_tokens": strategy.options.chunk_tokens, "keep": strategy.options.keep}
        elif isinstance(strategy, Adaptive):
            found = {"threshold": strategy.options.threshold}
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(**{**found, **given})  # type: ignore[arg-type]


class WindowGate:
    """Holds streamed text back until the window that holds it has passed every gate.

    ``released`` is the text already out (it passed). :meth:`add` takes new text; once
    ``window_tokens`` tokens are held, the answer up to their end is checked
    (``check``, a partial candidate) and the held text is released only if it passed.
    :meth:`finish` checks the complete answer (``final``) before the last text goes
    out. After a failed check nothing more is released (``failed``, ``verdict``).
    """

    def __init__(
        self, check: WindowCheck, final: WindowCheck, window_tokens: int, released: str = ""
    ) -> None:
        self.check = check
        self.final = final
        self.window_tokens = max(1, window_tokens)
        self.released = released
        self.tokens = 0
        """Tokens of the answer so far (released and held)."""
        self.held = ""
        self.held_tokens = 0
        self.failed = False
        self.verdict: Candidate | None = None
        """The last check's scored candidate."""

    async def add(self, text: str, tokens: int) -> str:
        """Take new text; returns what it released ("" while its window fills)."""
        if self.failed:
            return ""
        self.held += text
        self.held_tokens += tokens
        self.tokens += tokens
        if self.held_tokens < self.window_tokens:
            return ""
        return await self._judge(self.check, PARTIAL, "length")

    async def finish(self, finish_reason: str) -> str:
        """The answer ended: check it whole (every scorer); returns what that released."""
        if self.failed:
            return ""
        return await self._judge(self.final, COMPLETE, finish_reason)

    async def _judge(self, check: WindowCheck, state: str, finish_reason: str) -> str:
        answer = Candidate(
            text=self.released + self.held,
            tokens=self.tokens,
            finish_reason=finish_reason,
            state=state,  # type: ignore[arg-type]
        )
        self.verdict = await check(answer)
        if not self.verdict.passed:
            self.failed = True
            return ""
        out, self.held, self.held_tokens = self.held, "", 0
        self.released += out
        return out


def gate_check(
    aligner: Aligner, messages: Sequence[Message], assessment: RequestAssessment | None
) -> WindowCheck:
    """A window check by the policy's gating scorers only (the others' scores do not
    decide whether text may go out). A gating scorer that fails fails the window."""
    gating = [w for w in aligner.weightings if w.gate is not None]
    verdict = assessment or RequestAssessment()

    async def check(answer: Candidate) -> Candidate:
        results = await asyncio.gather(
            *(w.scorer.score_details(messages, [answer], assessment=verdict) for w in gating),
            return_exceptions=True,
        )
        raw: dict[str, list[float]] = {}
        labels: dict[str, list[tuple[str, ...]]] = {}
        for w, details in zip(gating, results, strict=True):
            if isinstance(details, BaseException) or len(details) != 1:
                log.warning("gating scorer %s failed on a window; failing closed", w.name)
                details = [ScoreDetail(math.nan)]  # NaN fails the gate
            raw[w.name] = [details[0].value]
            labels[w.name] = [details[0].labels]
        return combine([answer], raw, gating, labels)[0]

    return check


@dataclass
class _Draft:
    """One answer being written while selecting, with its latest scores."""

    text: str
    tokens: int
    finished: bool
    scored: Candidate | None = None

    def candidate(self, max_tokens: int) -> Candidate:
        if self.finished:
            finish = "length" if self.tokens >= max_tokens else "stop"
            return Candidate(text=self.text, tokens=self.tokens, finish_reason=finish)
        return Candidate(text=self.text, tokens=self.tokens, finish_reason="length", state=PARTIAL)


@dataclass
class Selection:
    """The survivor and the candidates dropped on the way (for the audit)."""

    survivor: _Draft
    dropped: list[Candidate] = field(default_factory=list)
    checks: int = 0


async def select_survivor(ctx: SearchContext, options: EarlyStreamOptions) -> Selection:
    """Early rejection down to one answer (see the module's docstring, step 2)."""
    first = min(options.chunk_tokens, ctx.max_tokens)
    generation = await ctx.generate(ctx.n, ctx.with_max_tokens(first))
    drafts = [
        _Draft(c.text, c.tokens, c.finish_reason != "length" or c.tokens >= ctx.max_tokens)
        for c in generation.candidates
    ]
    dropped: list[Candidate] = []
    checks = 0
    while True:
        stale = [d for d in drafts if d.scored is None]
        scored = await ctx.score([d.candidate(ctx.max_tokens) for d in stale])
        for d, s in zip(stale, scored, strict=True):
            d.scored = s
        checks += 1
        order = sorted(drafts, key=lambda d: rank_key(_scored(d)), reverse=True)
        best = _scored(order[0])
        if (
            len(order) == 1
            or all(d.finished for d in order)
            or (
                options.threshold is not None
                and best.passed
                and reaches(best.score, options.threshold)
            )
        ):
            n_keep = 1
        else:
            n_keep = max(1, math.ceil(options.keep * len(order)))
        for d in order[n_keep:]:
            s = _scored(d)
            dropped.append(s if d.finished else replace(s, state=REJECTED))
        drafts = [d for d in drafts if any(d is k for k in order[:n_keep])]
        if len(drafts) == 1:
            return Selection(drafts[0], dropped, checks)
        open_ = [d for d in drafts if not d.finished]
        if not open_:
            continue
        step = min(options.chunk_tokens, ctx.max_tokens - max(d.tokens for d in open_))
        extension = await ctx.extend([d.text for d in open_], max(1, step))
        for d, more in zip(open_, extension.candidates, strict=True):
            d.text += more.text
            d.tokens += more.tokens
            d.finished = more.finish_reason != "length" or d.tokens >= ctx.max_tokens
            d.scored = None


def _scored(draft: _Draft) -> Candidate:
    assert draft.scored is not None
    return draft.scored


class EarlyAnswer:
    """One request answered while its answer is still being selected.

    :meth:`select`, then iterate :meth:`texts` for the released text; afterwards
    :attr:`result` holds the
    candidates (the survivor last), ``best`` set only when the whole answer passed,
    and :attr:`sent` the text released. :attr:`blocked` is True when text had gone out
    and a later window failed (or the answer could not be finished): the caller ends
    the answer with the fallback notice.
    """

    def __init__(
        self,
        aligner: Aligner,
        request: AlignRequest,
        options: EarlyStreamOptions | None = None,
        *,
        deadline: float | None = None,
    ) -> None:
        self.aligner = aligner
        self.deadline = deadline
        """Event-loop time by which the streamed rest must be written (``None``: no limit);
        past it the answer ends closed, as after a failed window."""
        self.request = request
        self.options = options or EarlyStreamOptions.for_strategy(aligner.strategy)
        self.result: Result | None = None
        self.sent = ""
        self.blocked = False
        self.first_text_s: float | None = None
        """Seconds from the start to the first released text."""
        self.mode = "early"
        """``early``, or ``whole`` when the request was selected as a whole (a steered
        request with an offered refusal, a backend that cannot continue answers)."""
        self._started = time.perf_counter()
        self._head = ""
        self._rest: tuple[SearchContext, _Draft, list[Candidate], RequestAssessment | None] | None
        self._rest = None

    async def select(self) -> Result:
        """Assess the request and select its survivor; nothing is released yet.

        Returns the result as it stands: final when nothing will stream (refused, no
        eligible candidate, an answer selected whole or finished while selecting);
        otherwise the survivor, passed so far, is ``best`` until :meth:`texts` ends.
        """
        al = self.aligner
        request = self.request.checked(al.policy)
        assessment = await al.assess(request.messages)
        if assessment is not None and assessment.action == "refuse":
            self.result = al.refusal_result(request.messages, assessment, self._started)
            return self.result
        ctx = al.search_context(request, assessment, self._started)
        if ctx.offered or not ctx.generator.capabilities.token_steps:
            # An offered refusal is a complete answer the scorers weigh against whole
            # answers; a backend without continuations cannot be pruned. Whole selection.
            self.mode = "whole"
            decision = await al.strategy.run(ctx)
            self.result = al.search_result(ctx, decision.best, al.strategy.name, assessment)
            self._head = ctx.candidates[decision.best].text if decision.best is not None else ""
            return self.result
        selection = await select_survivor(ctx, self.options)
        survivor = selection.survivor
        head = _scored(survivor)
        pool = selection.dropped
        best = len(pool) if head.passed else None  # none eligible: the fallback
        self.result = self._finish(ctx, [*pool, head], best, assessment)
        if best is not None:
            self._head = head.text
            if not survivor.finished:
                self._rest = (ctx, survivor, pool, assessment)
        return self.result

    async def texts(self) -> AsyncGenerator[str, None]:
        """The answer's text as it is released, after :meth:`select`. An error while the
        rest streams ends the answer closed (``blocked``) and is logged: text is out."""
        if self._head:
            yield self._release(self._head)
        if self._rest is None:
            return
        ctx, survivor, pool, assessment = self._rest
        gate = WindowGate(
            gate_check(self.aligner, ctx.request.messages, assessment),
            self._final(ctx),
            self.options.window_tokens,
            released=survivor.text,
        )
        gate.tokens = survivor.tokens
        try:
            async for out in self._stream(ctx, survivor, gate):
                yield out
        except Exception as exc:
            log.warning("stream-while-selecting ended early: %s", exc)
            gate.failed = True
            if gate.verdict is None or gate.verdict.passed:
                gate.verdict = self._interrupted(gate, exc)
        verdict = gate.verdict or _scored(survivor)
        self.blocked = gate.failed
        best = None if gate.failed else len(pool)
        self.result = self._finish(ctx, [*pool, verdict], best, assessment)

    async def _stream(
        self, ctx: SearchContext, survivor: _Draft, gate: WindowGate
    ) -> AsyncIterator[str]:
        """The survivor's rest, from the generator's token stream through ``gate``."""
        pieces = ctx.generator.stream(
            ctx.prompt_messages,
            survivor.text,
            ctx.max_tokens - survivor.tokens,
            ctx.params,
            block_tokens=self.options.window_tokens,
        )
        finish = "length"
        async with contextlib.aclosing(pieces):  # leaving early stops the decoding
            while not gate.failed:
                t0 = time.perf_counter()
                try:
                    piece = await self._next(pieces)
                except StopAsyncIteration:
                    out = await gate.finish(finish)
                    if out:
                        yield self._release(out)
                    return
                ctx.generate_s += time.perf_counter() - t0
                ctx.usage = ctx.usage + piece.usage
                new = piece.candidates[0]
                finish = new.finish_reason
                out = await gate.add(new.text, new.tokens)
                if out:
                    yield self._release(out)

    async def _next(self, pieces: AsyncGenerator[Generation, None]) -> Generation:
        """The next piece, within what is left of the request's time."""
        if self.deadline is None:
            return await anext(pieces)
        left = self.deadline - asyncio.get_running_loop().time()
        return await asyncio.wait_for(anext(pieces), max(0.0, left))

    def _release(self, text: str) -> str:
        if text and self.first_text_s is None:
            self.first_text_s = time.perf_counter() - self._started
        self.sent += text
        return text

    def _final(self, ctx: SearchContext) -> WindowCheck:
        async def final(answer: Candidate) -> Candidate:
            return (await ctx.score([answer]))[0]

        return final

    def _interrupted(self, gate: WindowGate, exc: Exception) -> Candidate:
        """The survivor as far as it was written, marked failed: it could not be checked."""
        name = exc.scorer if isinstance(exc, ScorerError) else "stream"
        return Candidate(
            text=gate.released + gate.held,
            tokens=gate.tokens,
            finish_reason="length",
            scores={name: math.nan} if isinstance(exc, ScorerError) else {},
            passed=False,
            gate_failures=(name,),
            state=PARTIAL,
        )

    def _finish(
        self,
        ctx: SearchContext,
        candidates: list[Candidate],
        best: int | None,
        assessment: RequestAssessment | None,
    ) -> Result:
        ctx.candidates = candidates
        return self.aligner.search_result(ctx, best, "early_stream", assessment)
