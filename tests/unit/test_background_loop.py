"""BackgroundLoop.stop: it returns wherever it is called from."""

from __future__ import annotations

import asyncio
import contextlib
import threading

from aligntime.background_loop import BackgroundLoop


def test_stop_from_a_thread_of_the_loops_own_executor_returns() -> None:
    # What a finalizer does when the garbage collector runs it on one of the loop's
    # executor threads (weakref.finalize(aligner, loop.stop)): the loop waits for that
    # thread as it shuts down, so a stop that joined the loop's thread there hung the
    # process at exit.
    background = BackgroundLoop("test-stop")

    async def stop_from_the_executor() -> None:
        await asyncio.get_running_loop().run_in_executor(None, background.stop)

    background.run(asyncio.sleep(0))
    thread = background._thread
    assert thread is not None
    done = threading.Event()

    def call() -> None:
        # Cancelled by the stop, or not: what matters is that it returns.
        with contextlib.suppress(BaseException):
            background.run(stop_from_the_executor())
        done.set()

    threading.Thread(target=call, daemon=True).start()
    assert done.wait(10)
    thread.join(10)
    assert not thread.is_alive()
    assert not background.running


def test_stop_from_another_thread_joins_and_the_loop_starts_again() -> None:
    background = BackgroundLoop("test-restart")
    assert background.run(asyncio.sleep(0, result=1)) == 1
    thread = background._thread
    background.stop()
    assert thread is not None and not thread.is_alive()
    assert background.run(asyncio.sleep(0, result=2)) == 2
    background.stop()
