"""The batch on Ray Data: pools of actors over a ``ray.data.Dataset``.

Each actor builds the policy's :class:`~aligntime.aligner.Aligner` once (its models
loaded on the actor's node, GPUs reserved per actor where the cluster has them) and
works on the rows of each batch it is given, a bounded number at a time, with the same
per-row code and records as the in-process batch. In one pool (:class:`AlignActor`)
an actor aligns whole rows; in two (:class:`GenerateActor` then :class:`ScoreActor`,
see :mod:`aligntime.batch.stages`) the generator and the scorers live in separate
actors, each pool sized for its own models. Ray's own readers and writers move
the data, so input and output can live on storage every node sees.

Ray retries the work of an actor that dies (a node lost mid-run) on another, and a
retried write task replaces its own file, so every row ends in the output exactly
once. Ray is the optional ``[ray]`` extra, imported only here.
"""

from __future__ import annotations

import logging
import math
import pickle
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from aligntime.batch.output import flat_record, read_records
from aligntime.batch.records import NESTED
from aligntime.batch.rows import BatchRow, is_parquet, parse_row, read_rows
from aligntime.batch.runner import BatchOptions, BatchSummary, align_row
from aligntime.batch.stages import Sampled, decide_row, sample_row
from aligntime.errors import InputError
from aligntime.policy.schema import Policy

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray run is.

    One pool (the default): ``actors`` actors each hold a whole aligner. Two pools
    (``generator_actors`` or ``scorer_actors`` given; the other then defaults to 1):
    generator actors run the input gate and sample, scorer actors score and choose,
    each pool sized and given CPUs and GPUs for its own models. Search strategies
    (``early_rejection``, ``guided``) generate and score in turns, so they run on one pool.
    """

    address: str | None = None
    """A cluster to join (``auto``, ``ray://host:10001``); None starts a local instance."""
    actors: int = 2
    """Aligner actors in the one pool."""
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    """GPUs each aligner actor reserves (its generator and scorers share them)."""
    batch_size: int = 8
    """Rows handed to an actor per call."""
    rows_per_block: int | None = None
    """Rows per block of the dataset the actors share out (a block goes to one actor
    whole). ``None``: four batches; ``run_on_ray`` sizes it from the row count so that
    each actor gets about four blocks."""
    generator_actors: int | None = None
    """Two pools: actors holding the generator (and the input gate)."""
    scorer_actors: int | None = None
    """Two pools: actors holding the scorers."""
    cpus_per_generator: float = 1.0
    gpus_per_generator: float = 0.0
    """GPUs each generator actor reserves (its generator and the input gate share them)."""
    cpus_per_scorer: float = 1.0
    gpus_per_scorer: float = 0.0
    """GPUs each scorer actor reserves (its scorers share them)."""

    def check(self, policy: Policy) -> None:
        """Refuse pool sizes and resources that cannot run, naming the option."""
        sizes = {"--batch-size": self.batch_size, "rows_per_block": _given(self.rows_per_block, 1)}
        if self.two_pools:  # the pool not named has one actor
            sizes["--generator-actors"] = _given(self.generator_actors, 1)
            sizes["--scorer-actors"] = _given(self.scorer_actors, 1)
        else:
            sizes["--actors"] = self.actors
        for name, value in sizes.items():
            if value < 1:
                raise InputError(f"{name} must be at least 1, got {value}")
        amounts = {
            "--cpus-per-actor": self.cpus_per_actor,
            "--gpus-per-actor": self.gpus_per_actor,
            "--cpus-per-generator": self.cpus_per_generator,
            "--gpus-per-generator": self.gpus_per_generator,
            "--cpus-per-scorer": self.cpus_per_scorer,
            "--gpus-per-scorer": self.gpus_per_scorer,
        }
        for name, amount in amounts.items():
            if not (amount >= 0 and math.isfinite(amount)):
                raise InputError(f"{name} must be a number of at least 0, got {amount}")
        if self.two_pools:
            from aligntime.registry import resolve
            from aligntime.strategies.base import SearchStrategy

            kind = policy.strategy.kind
            if issubclass(resolve("strategy", kind), SearchStrategy):
                raise InputError(
                    f"strategy {kind!r} generates and scores in turns, so it cannot run on "
                    "separate generator and scorer actors",
                    hint="use one pool (--actors) for this policy",
                )

    @property
    def two_pools(self) -> bool:
        """Whether generator and scorer actors are separate pools."""
        return self.generator_actors is not None or self.scorer_actors is not None


def _given(value: int | None, default: int) -> int:
    return default if value is None else value


def require_ray() -> Any:
    """The ``ray`` module, or an error naming the extra that installs it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        from aligntime.extras import missing

        raise missing("aligntime batch --ray", exc, extra="ray") from exc
    return ray


class _Actor:
    """An actor of a pool: an aligner built once, then batches of rows, a bounded
    number of them at a time on the actor's own event loop."""

    def __init__(self, policy: Policy, options: BatchOptions) -> None:
        from aligntime.aligner import Aligner
        from aligntime.background_loop import BackgroundLoop

        self.options = options
        self.aligner = Aligner.from_policy(policy)
        self.loop = BackgroundLoop("aligntime-ray-actor")

    def _each(self, call: Callable[[T], Awaitable[R]], items: list[T]) -> list[R]:
        from aligntime.many import run_many

        work = run_many(call, items, concurrency=self.options.concurrency, description="ray")
        return self.loop.run(work)

    @staticmethod
    def _rows(batch: Any) -> list[BatchRow]:
        return [parse_row(r, f"row id {r.get('id')!r}", 0) for r in batch.to_pylist()]

    @staticmethod
    def _table(records: list[dict[str, Any]]) -> Any:
        import pyarrow as pa

        return pa.Table.from_pylist([flat_record(r) for r in records])


class AlignActor(_Actor):
    """One actor of the one pool: the whole aligner."""

    def __init__(self, policy: Policy, options: BatchOptions) -> None:
        super().__init__(policy, options)
        self.aligner.load()

    def __call__(self, batch: Any) -> Any:
        def one(row: BatchRow) -> Awaitable[dict[str, Any]]:
            return align_row(self.aligner, row, self.options)

        return self._table(self._each(one, self._rows(batch)))


class GenerateActor(_Actor):
    """An actor of the generator pool: the input gate and the generator, loaded."""

    def __init__(self, policy: Policy, options: BatchOptions) -> None:
        super().__init__(policy, options)
        self.aligner.generator.load()
        if self.aligner.gate is not None:
            self.aligner.gate.load()

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        def one(row: BatchRow) -> Awaitable[Sampled]:
            return sample_row(self.aligner, row, self.options.request(row.messages))

        sampled = self._each(one, self._rows(batch))
        # Between our own two stages the row travels as a pickle: the same objects
        # (the request, the gate's verdict, the candidates) arrive, with no codec to keep.
        return pa.Table.from_pylist(
            [{"id": s.row.id, SAMPLED: pickle.dumps(s)} for s in sampled],
            schema=pa.schema([("id", pa.string()), (SAMPLED, pa.binary())]),
        )


class ScoreActor(_Actor):
    """An actor of the scorer pool: the scorers (and the gate's offered answers) loaded."""

    def __init__(self, policy: Policy, options: BatchOptions) -> None:
        super().__init__(policy, options)
        self.aligner.load_scorers()

    def __call__(self, batch: Any) -> Any:
        items: list[Sampled] = [pickle.loads(b) for b in batch.column(SAMPLED).to_pylist()]

        def one(sampled: Sampled) -> Awaitable[dict[str, Any]]:
            return decide_row(self.aligner, sampled)

        return self._table(self._each(one, items))


SAMPLED = "sampled"
"""The column that carries a row from the generator stage to the scorer stage."""


def align_dataset(
    dataset: Any,
    policy: Policy,
    *,
    options: BatchOptions | None = None,
    ray_options: RayOptions | None = None,
) -> Any:
    """A ``ray.data.Dataset`` of rows (``id`` and ``prompt`` or ``messages``) aligned.

    Returns a lazy dataset of output records (nested fields as JSON text, as in a
    Parquet batch output); write it with Ray's writers or iterate it. With
    ``ray_options.two_pools`` the generator and the scorers run in separate actor pools
    (:mod:`aligntime.batch.stages`); the records are the same.
    """
    options = options or BatchOptions()
    ray_options = ray_options or RayOptions()
    ray_options.check(policy)
    options.check(policy)
    ray = require_ray()
    b = ray_options.batch_size
    dataset = _in_blocks(dataset, ray_options.rows_per_block or 4 * b)
    kwargs = {"policy": policy, "options": options}
    if not ray_options.two_pools:
        pool = _pool(
            ray, ray_options.actors, ray_options.cpus_per_actor, ray_options.gpus_per_actor
        )
        return dataset.map_batches(AlignActor, fn_constructor_kwargs=kwargs, batch_size=b, **pool)
    o = ray_options
    generate = _pool(ray, _given(o.generator_actors, 1), o.cpus_per_generator, o.gpus_per_generator)
    score = _pool(ray, _given(o.scorer_actors, 1), o.cpus_per_scorer, o.gpus_per_scorer)
    sampled = dataset.map_batches(
        GenerateActor, fn_constructor_kwargs=kwargs, batch_size=b, **generate
    )
    return sampled.map_batches(ScoreActor, fn_constructor_kwargs=kwargs, batch_size=b, **score)


def _in_blocks(dataset: Any, rows: int) -> Any:
    """The dataset cut into blocks of at most ``rows`` rows.

    Ray Data reads a file as a couple of blocks whatever its length, and hands a block
    to one actor whole: the first actor ready can take every block and align every row
    while the others start up for nothing (why 2 workers were slower than 1). The
    cut is a streaming repartition, which Ray runs as tasks that reserve a CPU by
    default; on a cluster whose CPUs the actors hold (a one-CPU node each) such a task
    would wait forever, so it reserves none, like the reading and writing.
    ``repartition`` takes no resource arguments, so they are set in its logical
    operator (Ray 2.60's field).
    """
    cut = dataset.repartition(target_num_rows_per_block=rows)
    remote_args = getattr(getattr(getattr(cut, "_logical_plan", None), "dag", None),
                          "ray_remote_args", None)  # fmt: skip
    if isinstance(remote_args, dict):
        remote_args["num_cpus"] = 0  # the operator's own dict (it is frozen, its dict is not)
    else:  # another Ray: the cut still works where a CPU is free
        log.warning("could not make the batch's repartition reserve no CPU on this Ray")
    return cut


def _pool(ray: Any, actors: int, cpus: float, gpus: float) -> dict[str, Any]:
    """``map_batches`` arguments for a pool of up to ``actors`` actors."""
    return {
        "batch_format": "pyarrow",
        # All start at once; a run goes on with as few as one after a node is lost.
        "compute": ray.data.ActorPoolStrategy(min_size=1, max_size=actors, initial_size=actors),
        "num_cpus": cpus,
        "num_gpus": gpus or None,
        # an actor lost with its node is started again elsewhere and its batch retried
        "max_restarts": -1,
        "max_task_retries": -1,
    }


def run_on_ray(
    policy: str | Path | Policy,
    input_path: Path,
    output: Path,
    *,
    options: BatchOptions | None = None,
    ray: RayOptions | None = None,
) -> BatchSummary:
    """``aligntime batch --ray``: read, align on the pool, write with Ray's I/O, summarise.

    The output is a folder of files (one per write task); it must not exist yet, since
    a Ray run writes its output whole rather than resuming.
    """
    from aligntime.policy.loader import load_policy

    ray = ray or RayOptions()
    pol = policy if isinstance(policy, Policy) else load_policy(policy)
    ray.check(pol)  # bad sizes or settings fail here, before the cluster starts
    (options or BatchOptions()).check(pol)
    ray_mod = require_ray()
    rows = read_rows(input_path)  # malformed input fails here, before the cluster starts
    if ray.rows_per_block is None:  # about four blocks an actor: shared out evenly, few files
        pools = (_given(ray.generator_actors, 1), _given(ray.scorer_actors, 1))
        most = max(pools) if ray.two_pools else ray.actors
        ray = replace(ray, rows_per_block=max(ray.batch_size, math.ceil(len(rows) / (4 * most))))
    if any(row.numbered for row in rows):
        raise InputError(f"{input_path}: every row needs an 'id' on Ray (rows are spread)")
    if output.exists() and any(output.iterdir() if output.is_dir() else [output]):
        raise InputError(
            f"output {str(output)!r} already exists",
            hint="a Ray run writes its output folder whole: remove it or name another",
        )
    if not ray_mod.is_initialized():
        ray_mod.init(address=ray.address, include_dashboard=False, log_to_driver=False)
    data = ray_mod.data
    started = time.perf_counter()
    # Reading and writing reserve no CPU: they are light, and a CPU they held would be
    # one an aligner actor could not have (on a one-CPU node the job would wait forever).
    io = {"num_cpus": 0}
    read = data.read_parquet if is_parquet(input_path) else data.read_json
    source = read(str(input_path), num_cpus=0)
    aligned = align_dataset(source, pol, options=options, ray_options=ray)
    if is_parquet(output):
        aligned.write_parquet(str(output), ray_remote_args=io)
    else:
        aligned.write_json(str(output), lines=True, force_ascii=False, ray_remote_args=io)
    summary = BatchSummary(rows=len(rows), seconds=time.perf_counter() - started)
    for record in read_records(output):
        summary.add(record)
    return summary


__all__ = [
    "NESTED",
    "AlignActor",
    "GenerateActor",
    "RayOptions",
    "ScoreActor",
    "align_dataset",
    "run_on_ray",
]
