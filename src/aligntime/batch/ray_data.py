"""The batch on Ray Data: a pool of aligner actors over a ``ray.data.Dataset``.

Each actor builds the policy's :class:`~aligntime.aligner.Aligner` once (its models
loaded on the actor's node, GPUs reserved per actor where the cluster has them) and
aligns the rows of each batch it is given, a bounded number at a time, with the same
per-row code and records as the in-process batch. Ray's own readers and writers move
the data, so input and output can live on storage every node sees.

Ray retries the work of an actor that dies (a node lost mid-run) on another, and a
retried write task replaces its own file, so every row ends in the output exactly
once. Ray is the optional ``[ray]`` extra, imported only here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aligntime.batch.output import flat_record, read_records
from aligntime.batch.records import NESTED
from aligntime.batch.rows import is_parquet, parse_row, read_rows
from aligntime.batch.runner import BatchOptions, BatchSummary, align_row
from aligntime.errors import InputError
from aligntime.policy.schema import Policy

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide the Ray run is."""

    address: str | None = None
    """A cluster to join (``auto``, ``ray://host:10001``); None starts a local instance."""
    actors: int = 2
    """Aligner actors in the pool."""
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    """GPUs each actor reserves (its generator and scorers share them)."""
    batch_size: int = 8
    """Rows handed to an actor per call."""


def require_ray() -> Any:
    """The ``ray`` module, or an error naming the extra that installs it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        from aligntime.extras import missing

        raise missing("aligntime batch --ray", exc, extra="ray") from exc
    return ray


class AlignActor:
    """One actor of the pool: an aligner built once, then batches of rows aligned."""

    def __init__(self, policy: Policy, options: BatchOptions) -> None:
        from aligntime.aligner import Aligner
        from aligntime.background_loop import BackgroundLoop

        self.options = options
        self.aligner = Aligner.from_policy(policy)
        self.aligner.load()
        self.loop = BackgroundLoop("aligntime-ray-actor")

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa

        rows = [parse_row(r, f"row id {r.get('id')!r}", 0) for r in batch.to_pylist()]
        records = self.loop.run(self._align(rows))
        return pa.Table.from_pylist([flat_record(r) for r in records])

    async def _align(self, rows: list[Any]) -> list[dict[str, Any]]:
        from aligntime.many import run_many

        def one(row: Any) -> Any:
            return align_row(self.aligner, row, self.options)

        return await run_many(one, rows, concurrency=self.options.concurrency, description="ray")


def align_dataset(
    dataset: Any,
    policy: Policy,
    *,
    options: BatchOptions | None = None,
    ray_options: RayOptions | None = None,
) -> Any:
    """A ``ray.data.Dataset`` of rows (``id`` and ``prompt`` or ``messages``) aligned.

    Returns a lazy dataset of output records (nested fields as JSON text, as in a
    Parquet batch output); write it with Ray's writers or iterate it.
    """
    options = options or BatchOptions()
    ray_options = ray_options or RayOptions()
    if ray_options.actors < 1:
        raise InputError(f"--actors must be at least 1, got {ray_options.actors}")
    return dataset.map_batches(
        AlignActor,
        fn_constructor_kwargs={"policy": policy, "options": options},
        batch_size=ray_options.batch_size,
        batch_format="pyarrow",
        # at least one actor, up to --actors: a run goes on with fewer after a node is lost
        concurrency=(1, ray_options.actors),
        num_cpus=ray_options.cpus_per_actor,
        num_gpus=ray_options.gpus_per_actor or None,
        # an actor lost with its node is started again elsewhere and its batch retried
        max_restarts=-1,
        max_task_retries=-1,
    )


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
    ray_mod = require_ray()
    pol = policy if isinstance(policy, Policy) else load_policy(policy)
    rows = read_rows(input_path)  # malformed input fails here, before the cluster starts
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


__all__ = ["NESTED", "AlignActor", "RayOptions", "align_dataset", "run_on_ray"]
