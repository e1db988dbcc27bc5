"""A row aligned in two stages: sampled where the generator is, chosen where the scorers are.

On Ray the batch can hold the generator and the scorers in separate actor pools,
each sized (and given GPUs) for its own model. The generator stage
(:func:`sample_row`) checks the row's request, runs the input gate (a refused row is
never sampled) and samples the candidates the strategy will look at. The scorer
stage (:func:`decide_row`) hands those candidates to the aligner in place of its
generator (:class:`PoolGenerator`), so the scoring, the gates and the strategy's
rounds are the aligner's own (:meth:`~aligntime.aligner.Aligner.aalign_assessed`),
and the record is the one the one-pool path writes.

The scorer stage cannot ask the generator for another round, so the generator stage
samples, in one call, every candidate the strategy may want (:func:`pool_size`): the
first round for a strategy that decides in one round (best-of-N, soft best-of-N,
vote, pass-through), the policy's whole budget for one that may sample more
(``rejection``, ``adaptive``, a plugin). With a fixed seed candidate k is seeded the
same either way (:func:`~aligntime.generators.options.seed_at`), so the choice is the
same as in one process; the samples a round strategy did not use are not in the
record, but their tokens are in its ``usage`` (they were generated). Search
strategies (``early_rejection``, ``guided``) generate and score in turns and run
only on one pool.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from aligntime.batch.records import error_record, row_record
from aligntime.batch.rows import BatchRow
from aligntime.errors import BackendError, InputError
from aligntime.generators.base import Capabilities, Generator
from aligntime.request import AlignRequest
from aligntime.strategies.base import SamplingRounds, Strategy
from aligntime.strategies.best_of_n import BestOfN
from aligntime.strategies.passthrough import PassThrough
from aligntime.strategies.soft import SoftBestOfN
from aligntime.strategies.vote import MajorityVote
from aligntime.types import (
    Candidate,
    Generation,
    GenerationParams,
    Message,
    RequestAssessment,
    Usage,
)

if TYPE_CHECKING:
    from aligntime.aligner import Aligner

ONE_ROUND: tuple[type[Strategy], ...] = (BestOfN, SoftBestOfN, MajorityVote, PassThrough)
"""Built-in strategies that decide on their first round and never ask for more."""


@dataclass(frozen=True)
class Sampled:
    """What the generator stage hands the scorer stage for one row."""

    row: BatchRow
    request: AlignRequest | None = None
    """The row's request, checked against the policy."""
    assessment: RequestAssessment | None = None
    """The input gate's verdict (``None``: the policy has no gate)."""
    pool: tuple[Candidate, ...] = ()
    """The candidates sampled, unscored, in the order the generator returned them."""
    usage: Usage = field(default_factory=Usage)
    generate_s: float = 0.0
    elapsed_s: float = 0.0
    """Seconds the row spent in the generator stage (the gate and the sampling)."""
    record: dict[str, Any] | None = None
    """The row's finished record when the generator stage already settled it (an
    invalid request); the scorer stage passes it on."""


def pool_size(strategy: Strategy, n: int, budget: int) -> int:
    """Candidates to sample for a request of ``n`` with ``budget`` (see the module)."""
    if isinstance(strategy, ONE_ROUND):
        return SamplingRounds(strategy, n, budget).batch
    return budget


async def sample_row(aligner: Aligner, row: BatchRow, request: AlignRequest) -> Sampled:
    """The generator stage of one row: check, assess, then sample the pool (or not)."""
    started = time.perf_counter()
    try:
        checked = request.checked(aligner.policy)
        assessment = await aligner.assess(checked.messages)
        if assessment is not None and assessment.action == "refuse":
            return Sampled(row, checked, assessment, elapsed_s=time.perf_counter() - started)
        n = checked.n or aligner.policy.n
        size = pool_size(aligner.strategy, n, max(aligner.policy.total_budget, n))
        messages = aligner.generator_messages(checked, assessment)
        t0 = time.perf_counter()
        generation = await aligner.generator.generate(messages, size, checked.params)
        generate_s = time.perf_counter() - t0
    except InputError as exc:  # as in one process: the row is written with its error
        record = error_record(row.id, aligner.policy.name, row.messages, str(exc))
        return Sampled(row, record=record)
    return Sampled(
        row,
        checked,
        assessment,
        tuple(generation.candidates),
        generation.usage,
        generate_s,
        time.perf_counter() - started,
    )


async def decide_row(aligner: Aligner, sampled: Sampled) -> dict[str, Any]:
    """The scorer stage of one row: its output record, chosen from the sampled pool."""
    if sampled.record is not None:
        return sampled.record
    assert sampled.request is not None, "a row without a record has its request"
    pool = PoolGenerator(aligner.generator, sampled.pool, sampled.usage)
    try:
        result = await aligner.aalign_assessed(
            sampled.request,
            sampled.assessment,
            generator=pool,
            # dated from the start of the generator stage, so total_s counts both stages
            started=time.perf_counter() - sampled.elapsed_s,
        )
    except InputError as exc:
        return error_record(sampled.row.id, aligner.policy.name, sampled.row.messages, str(exc))
    # The replayed calls took no time: the sampling's seconds are the generator stage's.
    timings = replace(result.timings, generate_s=result.timings.generate_s + sampled.generate_s)
    return row_record(sampled.row.id, replace(result, timings=timings))


class PoolGenerator(Generator):
    """Hands back, call by call, candidates sampled earlier (by the generator stage).

    Its first call reports the whole sampling's token usage, since that is what the
    request cost whichever of the candidates the strategy goes on to use.
    """

    def __init__(self, source: Generator, pool: Sequence[Candidate], usage: Usage) -> None:
        self.name = source.name
        self._capabilities = source.capabilities
        self._pool = list(pool)
        self._usage = usage
        self._next = 0

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    async def generate(
        self, messages: Sequence[Message], n: int, params: GenerationParams
    ) -> Generation:
        if self._next + n > len(self._pool):
            raise BackendError(
                f"the strategy asked for {self._next + n} candidates and the generator "
                f"stage sampled {len(self._pool)}"
            )
        candidates = self._pool[self._next : self._next + n]
        usage = self._usage if self._next == 0 else Usage(0, 0)
        self._next += n
        return Generation(candidates, usage)
