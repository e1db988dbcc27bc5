"""An event loop in a background thread: what the synchronous API runs on.

``asyncio.run`` cannot be called where a loop is already running (Jupyter, an
async web app, a test), and a fresh loop per call would throw away every
loop-bound resource (HTTP connections, per-loop locks) after each request. So,
as the httpx and openai clients do, the sync methods hand their coroutine to
one loop that runs for the owner's lifetime in a daemon thread, and block the
calling thread (not the caller's loop machinery) until the result is back.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_worker = threading.local()
"""In a thread of a background loop's executor, ``loop`` is that loop."""


def _mark_worker(loop: asyncio.AbstractEventLoop) -> None:
    _worker.loop = loop


class BackgroundLoop:
    """A lazily started event loop in a daemon thread; thread-safe."""

    def __init__(self, name: str = "aligntime-loop") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the background loop and wait for its result.

        Works whether or not the calling thread has a running loop of its own.
        Interrupting the wait (Ctrl-C) cancels the coroutine.
        """
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError(
                "a synchronous aligntime method was called from inside its own event loop "
                "(e.g. from a scorer); await the async method instead"
            )
        future = asyncio.run_coroutine_threadsafe(coro, self._ensure())
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        """Stop the loop, close its async generators and executor, and join the thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        # On the loop's own thread, or on a thread of its executor (a finalizer that the
        # garbage collector happened to run there), joining would never return: the
        # loop waits for its executor's threads as it shuts down. It stops by itself.
        if thread is threading.current_thread() or getattr(_worker, "loop", None) is loop:
            return
        thread.join()

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                loop = asyncio.new_event_loop()
                loop.set_default_executor(
                    ThreadPoolExecutor(
                        thread_name_prefix=f"{self.name}-worker",
                        initializer=_mark_worker,
                        initargs=(loop,),
                    )
                )
                ready = threading.Event()
                thread = threading.Thread(
                    target=_serve, args=(loop, ready), name=self.name, daemon=True
                )
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
            return self._loop


def _serve(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    try:
        loop.run_forever()
    finally:
        # What asyncio.run does at its end: cancel leftovers, close async generators
        # (e.g. HTTP clients held open for the loop's life) and the thread pool.
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
