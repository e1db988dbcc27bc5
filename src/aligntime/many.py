"""Many requests with bounded concurrency, in order, with an optional progress bar.

:meth:`Aligner.aalign_many` and :meth:`Aligner.align_many` call this. The
library logs; a progress bar is drawn only when the caller asks for one and
standard error is a terminal, so a notebook, a pipe or a log file never fills
with bar redraws.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

log = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")


async def run_many(
    call: Callable[[P], Awaitable[R]],
    items: Sequence[P],
    *,
    concurrency: int,
    progress: bool = False,
    description: str = "aligning",
) -> list[R]:
    """``call`` on every item, at most ``concurrency`` at once; results in input order.

    The first failure cancels the calls still running and is raised.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    gate = asyncio.Semaphore(concurrency)
    bar = _Bar(len(items), description) if progress else None
    started = time.perf_counter()

    async def one(item: P) -> R:
        async with gate:
            result = await call(item)
        if bar is not None:
            bar.advance()
        return result

    tasks = [asyncio.ensure_future(one(item)) for item in items]
    try:
        results = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    log.info(
        "%s: %d requests in %.1f s (concurrency %d)",
        description,
        len(items),
        time.perf_counter() - started,
        concurrency,
    )
    return list(results)


class _Bar:
    """A rich progress bar on stderr when it is a terminal; otherwise nothing."""

    def __init__(self, total: int, description: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        console = Console(stderr=True)
        self._progress: Progress | None = None
        if console.is_terminal:
            self._progress = Progress(
                description,
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self._task = self._progress.add_task(description, total=total)
            self._progress.start()

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
