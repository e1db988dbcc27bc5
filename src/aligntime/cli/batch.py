"""``aligntime batch``: align a data set of prompts, in this process or on Ray."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from aligntime.cli.console import err, out, policy_models, pull_with_progress, status
from aligntime.errors import InputError

if TYPE_CHECKING:
    from aligntime.batch.runner import BatchOptions, BatchSummary
    from aligntime.policy.schema import Policy


def batch(
    input_path: Path = typer.Option(
        ..., "--input", "-i", help="JSONL or Parquet: one {id, prompt | messages} per row."
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", help="JSONL or Parquet (by suffix); resumed if it exists."
    ),
    policy: str = typer.Option("default", "--policy", "-p", help="Preset name or YAML file."),
    n: int | None = typer.Option(None, "-n", "--n", help="Candidates per row (policy default)."),
    concurrency: int = typer.Option(4, "--concurrency", "-c", help="Rows aligned at once."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Tokens per candidate."),
    temperature: float | None = typer.Option(None, "--temperature", help="Sampling temperature."),
    template: str | None = typer.Option(None, "--template", "-t", help="Task template to use."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed for every row."),
    ray: bool = typer.Option(
        False,
        "--ray",
        # "\\[" keeps rich from reading [ray] as markup and dropping it
        help="Run on Ray Data (pip install 'aligntime\\[ray]'); alone, a local Ray instance.",
    ),
    ray_address: str | None = typer.Option(
        None,
        "--ray-address",
        help="With --ray: the cluster to join (auto, ray://host:10001, host:6379).",
    ),
    actors: int | None = typer.Option(
        None, "--actors", help="With --ray: aligner actors in the one pool (default 2)."
    ),
    cpus_per_actor: float | None = typer.Option(
        None, "--cpus-per-actor", help="With --ray: CPUs each aligner actor reserves (1)."
    ),
    gpus_per_actor: float | None = typer.Option(
        None, "--gpus-per-actor", help="With --ray: GPUs each aligner actor reserves (0)."
    ),
    generator_actors: int | None = typer.Option(
        None,
        "--generator-actors",
        help="With --ray: two pools; actors holding the generator and the input gate "
        "(default 1 when --scorer-actors is given). Not for search strategies "
        "(early_rejection, guided), which run on one pool.",
    ),
    scorer_actors: int | None = typer.Option(
        None,
        "--scorer-actors",
        help="With --ray: two pools; actors holding the scorers "
        "(default 1 when --generator-actors is given).",
    ),
    cpus_per_generator: float = typer.Option(
        1.0, "--cpus-per-generator", help="With two pools: CPUs each generator actor reserves."
    ),
    gpus_per_generator: float = typer.Option(
        0.0, "--gpus-per-generator", help="With two pools: GPUs each generator actor reserves."
    ),
    cpus_per_scorer: float = typer.Option(
        1.0, "--cpus-per-scorer", help="With two pools: CPUs each scorer actor reserves."
    ),
    gpus_per_scorer: float = typer.Option(
        0.0, "--gpus-per-scorer", help="With two pools: GPUs each scorer actor reserves."
    ),
    batch_size: int = typer.Option(8, "--batch-size", help="With --ray: rows per actor call."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Align every row of a data set; write the chosen answer and every candidate per row.

    With --ray, one pool of actors each holds a whole aligner (--actors); with
    --generator-actors/--scorer-actors, generator and scorer actors are separate pools,
    each sized and given CPUs and GPUs for its own models.
    """
    from aligntime.batch.runner import BatchOptions
    from aligntime.cli.run import check_temperature
    from aligntime.policy.loader import load_policy
    from aligntime.request import RequestError

    check_temperature(temperature)
    pol = load_policy(policy)
    options = BatchOptions(n, max_tokens, temperature, seed, template, concurrency)
    try:  # the aligner's own check, as `aligntime run` makes it, before any model
        options.check(pol)
    except RequestError as exc:
        if exc.field == "concurrency":
            raise InputError("--" + exc.message, hint=exc.hint) from None
        raise
    one_pool = {"--actors": actors, "--cpus-per-actor": cpus_per_actor,
                "--gpus-per-actor": gpus_per_actor}  # fmt: skip
    two_pools = generator_actors is not None or scorer_actors is not None
    if not ray:
        given = [k for k, v in {"--ray-address": ray_address, **one_pool}.items() if v is not None]
        if two_pools:
            given.append(
                "--generator-actors" if generator_actors is not None else "--scorer-actors"
            )
        if given:
            raise InputError(f"{given[0]} needs --ray")
    if two_pools and any(v is not None for v in one_pool.values()):
        name = next(k for k, v in one_pool.items() if v is not None)
        raise InputError(
            f"{name} sizes the one pool; with --generator-actors/--scorer-actors use "
            "--cpus-per-generator, --gpus-per-generator, --cpus-per-scorer, --gpus-per-scorer"
        )
    if ray:
        from aligntime.batch.ray_data import RayOptions, run_on_ray

        default = RayOptions()
        summary = run_on_ray(
            pol,
            input_path,
            output,
            options=options,
            ray=RayOptions(
                address=ray_address,
                actors=default.actors if actors is None else actors,
                cpus_per_actor=default.cpus_per_actor if cpus_per_actor is None else cpus_per_actor,
                gpus_per_actor=default.gpus_per_actor if gpus_per_actor is None else gpus_per_actor,
                batch_size=batch_size,
                generator_actors=generator_actors,
                scorer_actors=scorer_actors,
                cpus_per_generator=cpus_per_generator,
                gpus_per_generator=gpus_per_generator,
                cpus_per_scorer=cpus_per_scorer,
                gpus_per_scorer=gpus_per_scorer,
            ),
        )
    else:
        summary = _in_process(pol, input_path, output, options, quiet=as_json)
    if as_json:
        out.file.write(json.dumps(summary.to_dict()) + "\n")
        return
    s = summary
    err.print(
        f"{s.rows} rows: {s.aligned} aligned, {s.skipped} already done; "
        f"{s.refusals} refused, {s.fallbacks} fallbacks, {s.errors} errors; "
        f"{s.prompt_tokens} prompt + {s.completion_tokens} completion tokens; "
        f"{s.seconds:.1f} s ({s.rows_per_s:.2f} rows/s)"
        + ("" if s.load_s is None else f" after {s.load_s:.1f} s loading models")
        + f" -> {output}"
    )


def _in_process(
    pol: Policy,
    input_path: Path,
    output: Path,
    options: BatchOptions,
    *,
    quiet: bool,
) -> BatchSummary:
    from aligntime.aligner import Aligner
    from aligntime.batch.rows import read_rows
    from aligntime.batch.runner import run_batch

    rows = read_rows(input_path)  # a malformed input fails before any model loads
    pull_with_progress(policy_models(pol), quiet=quiet)
    with Aligner.from_policy(pol) as aligner:
        started = time.perf_counter()
        with status("loading models ...", quiet=quiet):
            aligner.load()
        load_s = time.perf_counter() - started
        with _Progress(len(rows), quiet=quiet) as bar:
            summary = run_batch(aligner, rows, output, options, on_row=bar.update)
        summary.load_s = load_s
        return summary


class _Progress:
    """A progress bar on stderr while it is a terminal (and not --json); otherwise nothing."""

    def __init__(self, total: int, *, quiet: bool) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress: Progress | None = None
        if not quiet and err.is_terminal:
            self._progress = Progress(
                TextColumn("aligning"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            )
            self._task = self._progress.add_task("aligning", total=total)

    def __enter__(self) -> _Progress:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=total)
