"""The strategy contract: how many candidates a request takes, and which one the user sees.

:meth:`Strategy.decide` is pure selection logic; :meth:`Strategy.run` obtains the
candidates through a :class:`~aligntime.strategies.context.SearchContext`, the only
door to the generator and the scorers. The sampling-round loop
(:class:`SamplingRounds`) has no I/O, so the evaluation replays it over recorded
candidates exactly as the aligner runs it over fresh ones.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel

from aligntime.errors import ConfigError
from aligntime.strategies.context import ScoreFn, SearchContext, SearchOutcome
from aligntime.types import Candidate, CandidateState, rank_key

__all__ = [
    "COMPLETE",
    "PARTIAL",
    "REJECTED",
    "Decision",
    "RoundState",
    "SamplingRounds",
    "ScoreFn",
    "SearchContext",
    "SearchOutcome",
    "SearchStrategy",
    "Strategy",
    "argmax_score",
    "eligible",
]


@dataclass(frozen=True)
class Decision:
    """A strategy's verdict after one round of sampling and scoring.

    ``best`` indexes the chosen candidate (``None``: nothing eligible). When
    ``more`` is positive the aligner samples that many further candidates and
    asks again; it stops asking once the policy's budget is spent, and then
    ``best`` stands (``None`` means the policy's fallback text is returned).
    """

    best: int | None
    more: int = 0
    reason: str = ""


@dataclass(frozen=True)
class RoundState:
    """What a strategy knows about one request when it decides.

    Strategies are shared by concurrent requests, so anything per request
    reaches them through this object rather than through instance state.
    """

    requested: int
    """The N the request asked for."""
    budget: int
    """Candidates the aligner may still sample for this request."""
    elapsed_s: float = 0.0
    """Seconds since the request started."""


class Strategy(ABC):
    """Chooses what the user sees, and says how many candidates that takes.

    :meth:`decide` is the one decision entry point, and it is pure (no I/O, no
    model calls): given every candidate scored so far for a request, each with
    ``score`` (combined, higher is better) and ``passed`` (all gates held), and the
    request's :class:`RoundState`, it picks one or asks for more. Strategies are
    shared by concurrent requests, so anything per request reaches them through
    ``state``.

    :meth:`run` is how a request's candidates come to exist; every model call goes
    through the :class:`SearchContext`. The default samples rounds
    (:class:`SamplingRounds`: sample, score, decide, repeat); a
    :class:`SearchStrategy` writes its candidates itself.
    """

    name: str = "strategy"
    Options: ClassVar[type[BaseModel] | None] = None
    """The pydantic model of the options a policy gives this implementation (its keys
    in the policy section); ``None``: it takes none. :func:`aligntime.registry.build`
    validates the keys against it and passes the instance to the constructor."""
    only_leader_matters: ClassVar[bool] = False
    """A promise that lets the aligner skip ``lazy`` scorers on candidates that cannot win.

    True means: :meth:`decide` depends on the other candidates' scores only through
    which eligible candidate has the highest combined score (and that candidate's own
    score), so lowering the score of an eligible candidate that is strictly below that
    leader never changes the decision. An argmax over the eligible candidates keeps it,
    and so does a threshold test on them, since the leader reaches any threshold such a
    candidate reaches. A strategy that weighs or counts every candidate (soft selection,
    a vote), writes candidates itself, or scores partial answers, leaves it False."""

    def initial_n(self, requested: int) -> int:
        """How many candidates to sample in the first round for a requested N."""
        return requested

    @abstractmethod
    def decide(self, candidates: Sequence[Candidate], state: RoundState) -> Decision:
        """Pick a candidate, or ask for more."""

    async def run(self, ctx: SearchContext) -> Decision:
        """Sample rounds through ``ctx`` until :meth:`decide` stops asking for more."""
        rounds = SamplingRounds(self, ctx.n, max(ctx.budget, ctx.n))
        while rounds.batch:
            await ctx.sample(rounds.batch)
            rounds.after(ctx.candidates, ctx.sampled, ctx.elapsed_s)
        return rounds.decision


class SamplingRounds:
    """The sampling-round loop without I/O, shared by the aligner and the replay.

    ``batch`` is how many candidates to sample next (0: the strategy has decided).
    After each round, :meth:`after` shows the strategy every candidate so far and
    sets the next batch: what it asks for, within the budget left.
    """

    def __init__(self, strategy: Strategy, requested: int, budget: int) -> None:
        self.strategy = strategy
        self.requested = requested
        self.budget = budget
        """Most candidates the request may sample, every round together."""
        self.batch = min(max(1, strategy.initial_n(requested)), budget)
        self.decision = Decision(None, reason="nothing was sampled")

    def after(self, candidates: Sequence[Candidate], sampled: int, elapsed_s: float) -> None:
        """Decide on ``candidates``, of which the generator sampled ``sampled``."""
        remaining = self.budget - sampled
        state = RoundState(self.requested, remaining, elapsed_s)
        self.decision = self.strategy.decide(candidates, state)
        more = self.decision.more
        self.batch = 0 if more <= 0 or remaining <= 0 else min(more, remaining)


class SearchStrategy(Strategy):
    """A strategy that writes its candidates itself (partial answers, token steps).

    :meth:`run` hands it the :class:`SearchContext` (:meth:`search`), then
    :meth:`decide` picks among the candidates it returned.
    """

    @abstractmethod
    async def search(self, ctx: SearchContext) -> SearchOutcome:
        """Produce scored candidates for one request."""

    async def run(self, ctx: SearchContext) -> Decision:
        """Search, then decide once among what the search kept."""
        if not ctx.generator.capabilities.token_steps:
            raise ConfigError(
                f"strategy {self.name!r} needs a backend that continues partial answers, "
                f"and {ctx.generator.name!r} does not",
                hint=(
                    "use the llamacpp, transformers or fake backend, or the openai backend "
                    "against a server that continues answers (see its continuation option)"
                ),
            )
        outcome = await self.search(ctx)
        ctx.candidates = outcome.candidates
        return self.decide(outcome.candidates, RoundState(ctx.n, 0, ctx.elapsed_s))

    def decide(self, candidates: Sequence[Candidate], state: RoundState) -> Decision:
        """The best complete candidate that passed every gate."""
        complete = [i for i in eligible(candidates) if candidates[i].state == COMPLETE]
        best = argmax_score(candidates, complete)
        if best is None:
            return Decision(None, reason="no complete candidate passed every gate")
        return Decision(best, reason=f"best of {len(complete)} complete candidates")


COMPLETE: CandidateState = "complete"
"""``state`` of a candidate written to its end."""
REJECTED: CandidateState = "rejected"
"""``state`` of a candidate a search strategy dropped before it was complete."""
PARTIAL: CandidateState = "partial"
"""``state`` of a candidate still being written (scorers see partial text)."""


def eligible(candidates: Sequence[Candidate]) -> list[int]:
    """Indices of the candidates that passed every gate."""
    return [i for i, c in enumerate(candidates) if c.passed]


def argmax_score(candidates: Sequence[Candidate], indices: Sequence[int]) -> int | None:
    """The index among ``indices`` (eligible ones) with the highest combined score, a
    missing or NaN score lowest (:func:`~aligntime.types.rank_key`); ties keep the earliest."""
    return max(indices, key=lambda i: rank_key(candidates[i]), default=None)
