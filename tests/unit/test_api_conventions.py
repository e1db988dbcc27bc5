"""The Python API behaves like the clients people know (httpx, openai), on the fake backend."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from aligntime import Aligner
from aligntime.background_loop import BackgroundLoop
from aligntime.errors import BackendError, InputError
from aligntime.generators.fake import FakeGenerator, FakeOptions
from aligntime.policy.loader import load_policy
from aligntime.types import Generation, GenerationParams, Message
from openai_stub_server import StubServer


class Recording(FakeGenerator):
    """The fake backend, noting which loop each call ran on and how many overlapped."""

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__(FakeOptions(responses=["Rest, fluids, and see a doctor if it is high."]))
        self.delay_s = delay_s
        self.loops: list[int] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.closed = 0

    async def generate(
        self, messages: Sequence[Message], n: int, params: GenerationParams
    ) -> Generation:
        self.loops.append(id(asyncio.get_running_loop()))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            return await super().generate(messages, n, params)
        finally:
            self.in_flight -= 1

    def close(self) -> None:
        self.closed += 1


def make(policy_file: Path, delay_s: float = 0.0) -> tuple[Aligner, Recording]:
    gen = Recording(delay_s)
    return Aligner(load_policy(policy_file), generator=gen), gen


def test_sync_align_works_inside_a_running_event_loop(fake_policy_file: Path) -> None:
    al, _ = make(fake_policy_file)

    async def application() -> str:
        # asyncio.run here would raise "cannot be called from a running event loop".
        return al.align("What helps a fever?", n=2).text

    with al:
        assert "doctor" in asyncio.run(application())
        assert al.score("What helps a fever?", ["Rest."])[0].text == "Rest."


def test_sync_align_works_in_a_jupyter_like_cell(fake_policy_file: Path) -> None:
    # A notebook kernel runs each cell as plain code inside a callback of its running loop.
    al, _ = make(fake_policy_file)
    loop = asyncio.new_event_loop()
    cell_output: list[object] = []

    def cell() -> None:
        assert asyncio.get_running_loop() is loop
        cell_output.append(al.align("What helps a fever?").best)
        cell_output.append(len(al.align_many(["a", "b", "c"], concurrency=2)))
        loop.stop()

    loop.call_soon(cell)
    try:
        loop.run_forever()
    finally:
        loop.close()
        al.close()
    assert cell_output == [0, 3]


def test_sync_calls_share_one_persistent_loop_across_calls_and_threads(
    fake_policy_file: Path,
) -> None:
    al, gen = make(fake_policy_file)
    with al:
        al.align("one")
        threads = [threading.Thread(target=al.align, args=("two",)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(gen.loops) == 4 and len(set(gen.loops)) == 1


def test_context_managers_close(fake_policy_file: Path) -> None:
    with Aligner.from_policy(fake_policy_file) as al:
        al.align("hi")
        loop_threads = [t for t in threading.enumerate() if t.name == "aligntime-fake-test"]
        assert len(loop_threads) == 1
    assert not loop_threads[0].is_alive()

    async def use() -> Recording:
        al, gen = make(fake_policy_file)
        async with al:
            res = await al.aalign("hi")
            assert res.best is not None
        return gen

    assert asyncio.run(use()).closed == 1


def test_close_is_idempotent_and_an_aligner_can_be_used_after_close(
    fake_policy_file: Path,
) -> None:
    al, gen = make(fake_policy_file)
    al.align("hi")
    al.close()
    al.close()
    assert gen.closed == 2
    assert al.align("again").best == 0  # a new loop starts on demand
    al.close()


def test_align_many_keeps_order_and_bounds_concurrency(fake_policy_file: Path) -> None:
    al, gen = make(fake_policy_file, delay_s=0.05)
    prompts = [f"question {i}" for i in range(7)]
    with al:
        results = al.align_many(prompts, n=1, concurrency=3)
    assert [r.prompt for r in results] == prompts
    assert gen.max_in_flight == 3


def test_aalign_many_is_the_async_twin(fake_policy_file: Path) -> None:
    al, gen = make(fake_policy_file, delay_s=0.02)

    async def main() -> list[str]:
        async with al:
            results = await al.aalign_many(["a", "b", "c", "d"], concurrency=2, max_tokens=3)
        return [r.prompt for r in results]

    assert asyncio.run(main()) == ["a", "b", "c", "d"]
    assert gen.max_in_flight == 2


def test_align_many_raises_the_first_failure_and_validates_concurrency(
    fake_policy_file: Path,
) -> None:
    with Aligner.from_policy(fake_policy_file) as al:
        with pytest.raises(InputError, match="the prompt is empty"):
            al.align_many(["fine", "   ", "fine"])
        with pytest.raises(InputError, match="concurrency must be at least 1"):
            al.align_many(["fine"], concurrency=0)


def test_the_progress_bar_stays_off_when_stderr_is_not_a_terminal(
    fake_policy_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Aligner.from_policy(fake_policy_file) as al:
        al.align_many(["a", "b"], progress=True)
    assert capsys.readouterr().err == ""


def test_sync_methods_take_typed_keywords() -> None:
    for method in (Aligner.align, Aligner.align_many, Aligner.aalign_many, Aligner.score):
        params = inspect.signature(method).parameters.values()
        assert all(p.kind is not inspect.Parameter.VAR_KEYWORD for p in params), method
    align = inspect.signature(Aligner.align).parameters
    aalign = inspect.signature(Aligner.aalign).parameters
    assert list(align) == list(aalign)


def test_unknown_keywords_fail_at_the_call(fake_policy_file: Path) -> None:
    with Aligner.from_policy(fake_policy_file) as al, pytest.raises(TypeError):
        al.align("hi", temprature=0.2)  # type: ignore[call-arg]


def test_a_sync_call_from_inside_the_background_loop_is_refused() -> None:
    loop = BackgroundLoop("test-loop")

    async def nested() -> None:
        async def inner() -> None:
            return None

        loop.run(inner())

    with pytest.raises(RuntimeError, match="await the async method"):
        loop.run(nested())
    loop.stop()


def test_backend_error_exposes_the_http_status(fake_policy_file: Path, tmp_path: Path) -> None:
    server = StubServer(api_key="right").start()
    try:
        policy = tmp_path / "remote.yaml"
        policy.write_text(
            "name: remote\n"
            "generator: {backend: openai, model: stub-model, max_retries: 0, "
            f"api_key_env: STUB_KEY, base_url: '{server.base_url}'}}\n"
        )
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("STUB_KEY", "wrong")
            with Aligner.from_policy(policy) as al, pytest.raises(BackendError) as info:
                al.align("hi", n=1)
        assert info.value.status == 401
    finally:
        server.stop()
    assert BackendError("down").status is None
