"""How long a request may wait: its own deadline, and the server's shutdown.

Every wait of a request (the Aligner, the audit commit) is bounded by the
request's deadline (``--timeout``); the Aligner's is also cut short when the
shutdown grace period (``--shutdown-timeout``) ends, so that on SIGTERM every
request gets an answer before the process exits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Aborted(Exception):
    """The shutdown grace period ended while the request was running."""


class Shutdown:
    """SIGTERM's drain: requests in flight get ``grace_s`` seconds, then are aborted.

    :meth:`begin` runs on the event loop (the server calls it when the signal
    arrives); every request's waits race :meth:`aborted`, so when the grace
    period ends each running request answers a 503 and audits itself.
    """

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.draining = False
        self._aborted: asyncio.Future[None] | None = None

    def aborted(self) -> asyncio.Future[None]:
        """A future of the running loop that completes when the grace period ends."""
        loop = asyncio.get_running_loop()
        if self._aborted is None or self._aborted.get_loop() is not loop:
            self._aborted = loop.create_future()
        return self._aborted

    def begin(self) -> None:
        """Start draining; call on the event loop. Again: nothing."""
        if self.draining:
            return
        self.draining = True
        log.warning("shutting down: requests in flight have %g s to finish", self.grace_s)
        future = self.aborted()
        asyncio.get_running_loop().call_later(self.grace_s, _complete, future)


def _complete(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def within(aw: Awaitable[T], deadline: float, shutdown: Shutdown | None = None) -> T:
    """``aw``'s result, unless ``deadline`` (event-loop time) passes first
    (TimeoutError) or ``shutdown``'s grace period ends first (:class:`Aborted`).

    What is left running is cancelled; a blocking call in a worker thread runs
    on, unawaited (a llama.cpp decode cannot be interrupted).
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(aw)
    waiters: set[asyncio.Future[Any]] = {task}
    if shutdown is not None:
        waiters.add(shutdown.aborted())
    try:
        await asyncio.wait(
            waiters,
            timeout=max(0.0, deadline - loop.time()),
            return_when=asyncio.FIRST_COMPLETED,
        )
    except asyncio.CancelledError:
        task.cancel()
        raise
    if task.done():
        return task.result()
    task.cancel()
    task.add_done_callback(_forget)
    if shutdown is not None and shutdown.aborted().done():
        raise Aborted
    raise TimeoutError


def _forget(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned task's outcome, so it is not logged as never retrieved."""
    if not task.cancelled():
        task.exception()
