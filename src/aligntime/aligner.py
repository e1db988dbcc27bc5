"""The Aligner: input gate, prompt policy, generator, scorers and strategy from a policy.

Every entry point (CLI, server, evaluation, batch) calls :meth:`Aligner.aalign`
or :meth:`Aligner.ascore`; none re-implements a step. A request first meets the
input gate (when the policy has one): refused, it is answered with the refusal
text and nothing is sampled; steered, it is sampled under the stricter prompt.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar

from aligntime.background_loop import BackgroundLoop
from aligntime.errors import ConfigError, InputError, ScorerError
from aligntime.generators.base import Generator
from aligntime.input_gate import InputGate
from aligntime.policy.loader import load_policy
from aligntime.policy.schema import Policy
from aligntime.prompting.policy import PromptPolicy
from aligntime.registry import build
from aligntime.request import AlignRequest, Conversation, to_messages
from aligntime.scorers.base import Scorer, as_scorer_error
from aligntime.scorers.combine import Gate, ScorerWeighting, combine, contenders
from aligntime.strategies.base import SearchContext, Strategy
from aligntime.tools import call_text
from aligntime.types import (
    Candidate,
    GenerationParams,
    Message,
    RequestAssessment,
    Result,
    ScoreDetail,
    Timings,
    Usage,
)

log = logging.getLogger(__name__)

__all__ = ["AlignRequest", "Aligner", "Conversation", "build", "to_messages"]

P = ParamSpec("P")
R = TypeVar("R")


def _sync(
    method: Callable[Concatenate[Aligner, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Aligner, P], R]:
    """The synchronous twin of an async method: the same parameters, run on the aligner's
    background loop (so it works inside a running event loop too)."""

    @functools.wraps(method)
    def run(self: Aligner, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._background.run(method(self, *args, **kwargs))

    run.__doc__ = f"Synchronous :meth:`{method.__name__}`; works inside a running event loop too."
    return run


class Aligner:
    """Aligns a frozen model's answers at inference time, as a policy describes.

    >>> with Aligner.from_policy("default") as al:  # doctest: +SKIP
    ...     res = al.align("My child has a fever. What should I do?", n=5)
    ...     results = al.align_many(["Hi", "What is 2+2?"], concurrency=2)
    >>> res.text, res.candidates, res.usage, res.timings  # doctest: +SKIP

    The async methods (:meth:`aalign`, :meth:`aalign_many`, :meth:`ascore`) run on
    the caller's event loop; ``async with`` closes the aligner. The sync methods run
    on one event loop in a background thread that lives until :meth:`close`, so they
    also work where a loop is already running (Jupyter, async applications), and
    loop-bound resources such as HTTP connections are reused across calls.
    """

    def __init__(
        self,
        policy: Policy,
        *,
        generator: Generator | None = None,
        scorers: Sequence[Scorer] | None = None,
        strategy: Strategy | None = None,
        input_scorers: Sequence[Scorer] | None = None,
    ) -> None:
        self.policy = policy
        self.prompt = PromptPolicy.from_spec(policy.prompt)
        self.gate: InputGate | None = None
        self.steered_prompt: PromptPolicy | None = None
        self.named_steers: dict[str, PromptPolicy] = {}
        """The prompt under each of ``input.steers`` (a scorer's ``steer_with``)."""
        if policy.input is not None:
            if input_scorers is None:
                input_scorers = [
                    build("scorer", s.kind, s.build_options(), where=s.where, name=s.name)
                    for s in policy.input.scorers
                ]
            self.gate = InputGate(
                policy.input,
                input_scorers,
                on_error=policy.on_scorer_error,
                fallback=policy.fallback,
            )
            if policy.input.steer is not None:
                self.steered_prompt = self.prompt.steered(policy.input.steer)
            self.named_steers = {
                name: self.prompt.steered(spec) for name, spec in policy.input.steers.items()
            }
        self.generator: Generator = generator or build(
            "generator",
            policy.generator.backend,
            policy.generator.build_options(),
            where=policy.generator.where,
        )
        if scorers is None:
            scorers = [
                build("scorer", s.kind, s.build_options(), where=s.where, name=s.name)
                for s in policy.scorers
            ]
        self.scorers = list(scorers)
        specs = {s.name: s for s in policy.scorers}
        self.weightings = []
        for scorer in self.scorers:
            spec = specs.get(scorer.name)
            gate = Gate(spec.gate.min, spec.gate.max) if spec and spec.gate else None
            weight = spec.weight if spec else 1.0
            self.weightings.append(ScorerWeighting(scorer.name, weight, gate, scorer))
        self.lazy_scorers = _lazy_scorers(policy, self.scorers)
        """The scorers a lazy scoring pass runs only on contenders (policy ``lazy``)."""
        self.strategy: Strategy = strategy or build(
            "strategy",
            policy.strategy.kind,
            policy.strategy.build_options(),
            where=policy.strategy.where,
        )
        self._loaded: asyncio.Future[None] | None = None
        self._scorers_loaded = False
        self._background = BackgroundLoop(f"aligntime-{policy.name}")
        # An aligner dropped without close() still stops its loop thread.
        weakref.finalize(self, self._background.stop)

    @classmethod
    def from_policy(cls, policy: str | Path | Policy, **kwargs: Any) -> Aligner:
        """Build from a preset name, a YAML path or a :class:`Policy`."""
        if not isinstance(policy, Policy):
            policy = load_policy(policy)
        return cls(policy, **kwargs)

    # --- loading ----------------------------------------------------------------------

    def load(self) -> None:
        """Load the generator and every scorer now, instead of on first use."""
        self.generator.load()
        if self.gate is not None:
            self.gate.load()
        self.load_scorers()

    def load_scorers(self) -> None:
        if not self._scorers_loaded:
            for scorer in self.scorers:
                try:
                    scorer.load()
                except Exception as exc:
                    if self.policy.on_scorer_error == "raise":
                        raise as_scorer_error(scorer, exc) from exc
                    log.warning("scorer %s failed to load: %s", scorer.name, exc)
            self._scorers_loaded = True

    # --- alignment --------------------------------------------------------------------

    async def aalign(
        self,
        conversation: Conversation,
        n: int | None = None,
        *,
        template: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        top_p: float | None = None,
        stop: Sequence[str] = (),
    ) -> Result:
        """Assess, sample, score and select an answer for ``conversation``.

        ``None`` (and an empty ``stop``) leaves the policy's generator setting in force.
        A request the input gate refuses returns at once: no candidates, the refusal
        text as ``fallback``, zero tokens. The keywords make an :class:`AlignRequest`
        for :meth:`aalign_request`.
        """
        params = GenerationParams(max_tokens, temperature, top_p, seed, tuple(stop))
        request = AlignRequest(to_messages(conversation), n, template, params)
        return await self.aalign_request(request)

    align = _sync(aalign)

    async def aalign_many(
        self,
        conversations: Sequence[Conversation],
        n: int | None = None,
        *,
        concurrency: int = 4,
        progress: bool = False,
        template: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        seed: int | None = None,
    ) -> list[Result]:
        """:meth:`aalign` every conversation, at most ``concurrency`` at once.

        Results come back in the order given. ``progress=True`` draws a bar on
        standard error when it is a terminal (the library otherwise only logs). The
        first failing request cancels the rest and its error is raised.
        """
        from aligntime.many import run_many

        if concurrency < 1:
            raise InputError(f"concurrency must be at least 1, got {concurrency}")
        params = GenerationParams(max_tokens, temperature, seed=seed)

        def one(conversation: Conversation) -> Awaitable[Result]:
            request = AlignRequest(to_messages(conversation), n, template, params)
            return self.aalign_request(request)

        return await run_many(one, conversations, concurrency=concurrency, progress=progress)

    align_many = _sync(aalign_many)

    async def aalign_request(self, request: AlignRequest) -> Result:
        """:meth:`aalign` for a request already built (by the server, the CLI or a caller).

        The request is checked against the policy here, once, before any work.
        """
        started = time.perf_counter()
        request = request.checked(self.policy)
        assessment = await self.assess(request.messages)
        return await self.aalign_assessed(request, assessment, started=started)

    align_request = _sync(aalign_request)

    async def aalign_assessed(
        self,
        request: AlignRequest,
        assessment: RequestAssessment | None,
        *,
        generator: Generator | None = None,
        started: float | None = None,
    ) -> Result:
        """:meth:`aalign_request` after the input gate, for a request already checked.

        ``assessment`` is the gate's verdict (``None``: the policy has no gate): a
        refusal is answered at once; otherwise the strategy samples, scores and selects.
        ``generator`` stands in for the policy's on this request only: the Ray batch
        passes one that hands back candidates sampled on another actor, so selection
        stays the aligner's own. ``started`` (a ``perf_counter`` time) dates the request.
        """
        started = time.perf_counter() if started is None else started
        if assessment is not None and assessment.action == "refuse":
            return self.refusal_result(request.messages, assessment, started)
        # Lazy scorers skip the candidates that cannot win, where the strategy looks
        # only at the leader: the choice is the same, for fewer expensive calls.
        lazy = self.strategy.only_leader_matters
        ctx = self.search_context(request, assessment, started, lazy=lazy)
        if generator is not None:
            ctx.generator = generator
        decision = await self.strategy.run(ctx)
        return self.search_result(ctx, decision.best, self.strategy.name, assessment)

    def generator_messages(
        self, request: AlignRequest, assessment: RequestAssessment | None
    ) -> list[Message]:
        """What the generator reads for a checked request: its conversation under the
        policy's prompt (the steer prompt when the input gate steered it)."""
        return self._prompt_for(assessment).apply(request.messages, request.template)

    async def asample(
        self,
        conversation: Conversation,
        n: int,
        *,
        template: str | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
    ) -> Result:
        """Sample ``n`` candidates in one generation call and score them; select nothing.

        The evaluation harness uses this to draw one pool of candidates per prompt
        and replay strategies over subsets of it. ``best`` is ``None`` and
        ``fallback`` is ``None``: no strategy ran. The input gate runs as in
        :meth:`aalign`: a refused request has no candidates and its ``fallback`` is
        the refusal text; a steered one is sampled under the steer prompt.
        """
        started = time.perf_counter()
        params = GenerationParams(max_tokens, seed=seed)
        request = AlignRequest(to_messages(conversation), n, template, params).checked(self.policy)
        assessment = await self.assess(request.messages)
        if assessment is not None and assessment.action == "refuse":
            return self.refusal_result(request.messages, assessment, started)
        # Never lazy: the evaluation replays every strategy over subsets of this pool,
        # and a candidate that trails the leader here may lead a subset.
        ctx = self.search_context(request, assessment, started)
        await ctx.sample(ctx.n)
        return self.search_result(ctx, None, "none", assessment, fallback=False)

    async def assess(self, conversation: Conversation) -> RequestAssessment | None:
        """The input gate's verdict on a request (``None`` when the policy has no gate)."""
        if self.gate is None:
            return None
        messages = to_messages(conversation)
        await asyncio.to_thread(self.gate.load)
        return await self.gate.assess(messages)

    def _prompt_for(self, assessment: RequestAssessment | None) -> PromptPolicy:
        """The steer prompt for a steered request, the policy's prompt otherwise."""
        if assessment is not None and assessment.action == "steer":
            if assessment.steer is not None and assessment.steer in self.named_steers:
                return self.named_steers[assessment.steer]
            if self.steered_prompt:
                return self.steered_prompt
        return self.prompt

    def refusal_result(
        self, messages: list[Message], assessment: RequestAssessment, started: float
    ) -> Result:
        """The answer to a request the input gate refused: nothing sampled, nothing spent.

        Returns a :class:`Result` with no candidates, the policy's refusal text (its
        fallback when it has none) as ``fallback``, zero usage and ``strategy="none"``;
        ``started`` (a ``perf_counter`` time) dates it. Public because every path that
        answers a request itself (:meth:`aalign_assessed`, :meth:`asample`, the
        stream-while-selecting answer in :mod:`aligntime.streaming`) must refuse alike.
        """
        refusal = self.policy.input.refusal if self.policy.input else None
        return Result(
            prompt=_prompt_text(messages),
            policy=self.policy.name,
            messages=messages,
            candidates=[],
            best=None,
            fallback=refusal or self.policy.fallback,
            usage=Usage(0, 0),
            timings=Timings(0.0, 0.0, time.perf_counter() - started),
            strategy="none",
            input=assessment,
        )

    def search_context(
        self,
        request: AlignRequest,
        assessment: RequestAssessment | None,
        started: float,
        *,
        lazy: bool = False,
    ) -> SearchContext:
        """One request's door to the generator and the scorers, for its strategy.

        Returns a fresh :class:`SearchContext` for a checked, not refused ``request``:
        the generator, the prompt messages under the policy's (or steer) prompt, the
        token and sample budgets, the offered answers, and a ``score`` that loads the
        scorers once and scores with all of them (the request's shape as a gate too).
        ``started`` (a ``perf_counter`` time) dates the request. ``lazy``: the policy's
        lazy scorers rate only the candidates that can still win (see :meth:`_score`);
        only for a strategy whose ``only_leader_matters`` holds. Public because
        :mod:`aligntime.streaming` runs its own selection over the same context a
        strategy gets, so its samples and scores count the same way.
        """
        # Scorer models load in a worker thread while the first candidates decode.
        scorers_ready = asyncio.ensure_future(asyncio.to_thread(self.load_scorers))

        async def score(candidates: list[Candidate]) -> list[Candidate]:
            await scorers_ready
            # The shape the request asks for (response_format, tools) is a gate too.
            return await self._score(
                request.messages, candidates, assessment, request.params, lazy=lazy
            )

        default_tokens = getattr(getattr(self.generator, "options", None), "max_tokens", 256)
        n = request.n or self.policy.n
        return SearchContext(
            generator=self.generator,
            prompt_messages=self.generator_messages(request, assessment),
            request=request,
            max_tokens=request.params.max_tokens or int(default_tokens),
            scorer=score,
            budget=max(self.policy.total_budget, n),
            offered=self.gate.offered(assessment) if self.gate is not None else (),
            started=started,
        )

    def search_result(
        self,
        ctx: SearchContext,
        best: int | None,
        strategy: str,
        assessment: RequestAssessment | None,
        *,
        fallback: bool = True,
    ) -> Result:
        """The :class:`Result` of a search over ``ctx``: its candidates, usage and timings.

        ``best`` indexes ``ctx.candidates`` (``None``: nothing chosen, and then the
        policy's fallback is the answer unless ``fallback`` is False, as when nothing
        was selected on purpose); ``strategy`` names what selected (recorded in the
        result and the audit); ``assessment`` is the input gate's verdict. Public
        because :mod:`aligntime.streaming` selects by its own rules and still reports
        its result in the same shape as every strategy's.
        """
        messages = ctx.request.messages
        return Result(
            prompt=_prompt_text(messages),
            policy=self.policy.name,
            messages=messages,
            candidates=ctx.candidates,
            best=best,
            fallback=self.policy.fallback if best is None and fallback else None,
            usage=ctx.usage,
            timings=Timings(ctx.generate_s, ctx.score_s, ctx.elapsed_s),
            strategy=strategy,
            input=assessment,
        )

    # --- scoring ----------------------------------------------------------------------

    async def ascore(
        self,
        conversation: Conversation,
        answers: Sequence[str],
        *,
        assessment: RequestAssessment | None = None,
    ) -> list[Candidate]:
        """Score given answers to a request with the policy's scorers, in the order given.

        Scorers that read the input gate's verdict get ``assessment``; when it is not
        given and one of them needs it, the input gate assesses the request first (its
        verdict informs the scores; nothing is refused here).
        """
        messages = to_messages(conversation)
        if assessment is None and any(s.reads_assessment for s in self.scorers):
            assessment = await self.assess(messages)
        await asyncio.to_thread(self.load_scorers)
        return await self._score(messages, [Candidate(text=a) for a in answers], assessment)

    score = _sync(ascore)

    async def _score(
        self,
        messages: list[Message],
        candidates: list[Candidate],
        assessment: RequestAssessment | None,
        params: GenerationParams | None = None,
        *,
        lazy: bool = False,
    ) -> list[Candidate]:
        """Rate ``candidates`` with every scorer and combine: scores, gates, verdicts.

        ``lazy`` (and a policy with lazy scorers): the other scorers rate every
        candidate first; the lazy ones then rate only the :func:`contenders`, the
        eligible candidates whose score could still reach the leader's. A skipped
        candidate has no value of theirs in ``scores``, and its ``score`` counts them as
        0. For strategies that only compare candidates with the leader, the choice is
        the one a full pass gives.
        """
        if not candidates:
            return []
        # Without a gate, scorers that read the verdict see one with no harm estimate.
        verdict = assessment or RequestAssessment()
        # An answer that calls tools is scored on its calls: the scorers read them as text.
        shown = [replace(c, text=call_text(c)) if c.tool_calls else c for c in candidates]
        deferred = self.lazy_scorers if lazy else []
        eager = [s for s in self.scorers if s not in deferred]
        raw: dict[str, list[float | None]] = {}
        labels: dict[str, list[tuple[str, ...]]] = {}
        await self._rate(eager, messages, shown, verdict, raw, labels)
        scored = combine(candidates, raw, self.weightings, labels, params=params)
        if not deferred:
            return scored
        # Share of the combined score the lazy scorers can still add (weights are > 0).
        total = sum(w.weight for w in self.weightings if w.weight > 0)
        reach = sum(w.weight for w in self.weightings if w.scorer in deferred) / total
        picked = contenders(scored, reach)
        skipped = len(candidates) - len(picked)
        if skipped:
            log.debug("lazy scorers skip %d of %d candidates", skipped, len(candidates))
        rated: dict[str, list[float | None]] = {}
        rated_labels: dict[str, list[tuple[str, ...]]] = {}
        if picked:
            await self._rate(
                deferred, messages, [shown[i] for i in picked], verdict, rated, rated_labels
            )
        for scorer in deferred:
            values: list[float | None] = [None] * len(candidates)
            marks: list[tuple[str, ...]] = [()] * len(candidates)
            for k, i in enumerate(picked):
                values[i] = rated[scorer.name][k]
                marks[i] = rated_labels[scorer.name][k]
            raw[scorer.name], labels[scorer.name] = values, marks
        return combine(candidates, raw, self.weightings, labels, params=params)

    async def _rate(
        self,
        scorers: Sequence[Scorer],
        messages: list[Message],
        shown: list[Candidate],
        verdict: RequestAssessment,
        raw: dict[str, list[float | None]],
        labels: dict[str, list[tuple[str, ...]]],
    ) -> None:
        """Run ``scorers`` concurrently on ``shown``, adding their values and labels to
        ``raw`` and ``labels``; a failing scorer raises or degrades as the policy says."""
        results = await asyncio.gather(
            *(s.score_details(messages, shown, assessment=verdict) for s in scorers),
            return_exceptions=True,
        )
        for scorer, details in zip(scorers, results, strict=True):
            if isinstance(details, BaseException):
                if self.policy.on_scorer_error == "raise" or not isinstance(details, Exception):
                    raise as_scorer_error(scorer, details) from details
                log.warning("scorer %s failed, its scores are missing: %s", scorer.name, details)
                details = [ScoreDetail(math.nan)] * len(shown)
            if len(details) != len(shown):
                raise ScorerError(
                    scorer.name, f"returned {len(details)} values for {len(shown)} candidates"
                )
            raw[scorer.name] = [d.value for d in details]
            labels[scorer.name] = [d.labels for d in details]

    # --- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        """Release the models and connections, and stop the sync API's event loop.

        Idempotent. Loop-bound connections close as their loop ends: the background
        loop's here, the caller's own when that loop finishes.
        """
        self._background.stop()
        self._release()

    async def aclose(self) -> None:
        """:meth:`close` for async code: releases without blocking the running loop."""
        await asyncio.to_thread(self.close)

    def _release(self) -> None:
        self.generator.close()
        if self.gate is not None:
            self.gate.close()
        for scorer in self.scorers:
            scorer.close()

    def __enter__(self) -> Aligner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Aligner:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def _prompt_text(messages: Sequence[Message]) -> str:
    """The request's own text: the last message when it is the user's."""
    return messages[-1].content if messages and messages[-1].role == "user" else ""


def _lazy_scorers(policy: Policy, scorers: Sequence[Scorer]) -> list[Scorer]:
    """The scorers the policy marks ``lazy``; one whose values depend on the other
    candidates it rates (a pairwise judge) cannot be: it would rate a subset differently."""
    lazy = {s.name: (i, s) for i, s in enumerate(policy.scorers) if s.lazy}
    found = [s for s in scorers if s.name in lazy]
    for scorer in found:
        i, spec = lazy[scorer.name]
        if not scorer.rates_alone:
            message = (
                f"scorer kind {spec.kind!r} rates candidates against each other, so it "
                "cannot be lazy (rating only the contenders would change their values)"
            )
            where = spec.where
            if where is not None:
                raise where.error(message, "lazy")
            raise ConfigError(f"scorers[{i}].lazy: {message}")
    return found
