"""``aligntime batch``: align a data set of prompts, in this process or on Ray."""

from __future__ import annotations

import json
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
        False, "--ray", help="Run on Ray Data (the [ray] extra); alone, a local Ray instance."
    ),
    ray_address: str | None = typer.Option(
        None,
        "--ray-address",
        help="With --ray: the cluster to join (auto, ray://host:10001, host:6379).",
    ),
    actors: int = typer.Option(2, "--actors", help="With --ray: aligner actors in the pool."),
    cpus_per_actor: float = typer.Option(
        1.0, "--cpus-per-actor", help="With --ray: CPUs each aligner actor reserves."
    ),
    gpus_per_actor: float = typer.Option(
        0.0, "--gpus-per-actor", help="With --ray: GPUs each aligner actor reserves."
    ),
    batch_size: int = typer.Option(8, "--batch-size", help="With --ray: rows per actor call."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Align every row of a data set; write the chosen answer and every candidate per row."""
    from aligntime.cli.run import check_temperature
    from aligntime.policy.loader import load_policy

    check_temperature(temperature)
    if concurrency < 1:
        raise InputError(f"--concurrency must be at least 1, got {concurrency}")
    pol = load_policy(policy)
    if n is not None and not 1 <= n <= pol.max_n:
        raise InputError(f"n must be between 1 and {pol.max_n} for policy {pol.name!r}, got {n}")
    from aligntime.batch.runner import BatchOptions

    options = BatchOptions(
        n=n,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=seed,
        template=template,
        concurrency=concurrency,
    )
    if ray_address is not None and not ray:
        raise InputError("--ray-address needs --ray")
    if ray:
        from aligntime.batch.ray_data import RayOptions, run_on_ray

        summary = run_on_ray(
            policy,
            input_path,
            output,
            options=options,
            ray=RayOptions(
                address=ray_address,
                actors=actors,
                cpus_per_actor=cpus_per_actor,
                gpus_per_actor=gpus_per_actor,
                batch_size=batch_size,
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
        f"{s.seconds:.1f} s ({s.rows_per_s:.2f} rows/s) -> {output}"
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
        with status("loading models ...", quiet=quiet):
            aligner.load()
        with _Progress(len(rows), quiet=quiet) as bar:
            return run_batch(aligner, rows, output, options, on_row=bar.update)


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
