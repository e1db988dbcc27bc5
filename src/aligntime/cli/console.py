"""Terminal helpers shared by the commands: consoles, progress, model pulls."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from rich.console import Console, RenderableType
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from aligntime import registry
from aligntime.models import store
from aligntime.models.catalog import CATALOG
from aligntime.policy.schema import Policy


@dataclass
class _State:
    debug: bool = False


state = _State()
out = Console()
err = Console(stderr=True)


def print_table(table: RenderableType) -> None:
    """A table on stdout: fitted to a terminal, at its full width when piped.

    Rich fits tables to 80 columns when stdout is not a terminal and cuts cells
    (``smollm2-135m-ins…``); a pipe or a file gets every cell whole instead.
    """
    if out.is_terminal:
        out.print(table)
        return
    wide = Console(file=out.file, width=10_000, color_system=None)
    width = wide.measure(table).maximum
    Console(file=out.file, width=width, color_system=None).print(table)


def policy_models(policy: Policy, *, include_generator: bool = True) -> list[str]:
    """Catalogue models that a policy's generator and scorers name (with their defaults)."""
    names: list[str] = []
    for kind, _, section in policy.sections():
        if kind == "scorer" or (kind == "generator" and include_generator):
            # The implementation's own default model, read from its Options without loading it.
            options = registry.validate(kind, section.implementation, section.build_options())
            names.append(str(getattr(options, "model", "") or ""))
    seen: list[str] = []
    for name in names:
        if name in CATALOG and name not in seen:
            seen.append(name)
    return seen


def pull_with_progress(names: list[str], *, quiet: bool, force: bool = False) -> None:
    """Pull catalogue models that are missing, with a download bar on a terminal."""
    todo = [n for n in names if force or not store.is_pulled(n)]
    if not todo:
        return
    show = not quiet and err.is_terminal
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not show,
    ) as progress:
        tasks: dict[str, TaskID] = {}  # one bar per wheel, labelled project==version

        def report(label: str, done: int, total: int | None) -> None:
            if label not in tasks:
                tasks[label] = progress.add_task(label, total=total)
            progress.update(tasks[label], completed=done, total=total)

        for name in todo:
            if not quiet and not show:
                err.print(f"pulling model {name} ...")
            store.pull_model(name, force=force, progress=report)


@contextlib.contextmanager
def status(message: str, *, quiet: bool) -> Iterator[None]:
    """A spinner on stderr while a long step runs (nothing when quiet or not a terminal)."""
    if quiet or not err.is_terminal:
        yield
        return
    with err.status(message):
        yield
