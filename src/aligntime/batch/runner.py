"""Align every row of a batch in this process, a bounded number at a time.

Rows already in the output are skipped; each finished row is written at once, in
the order rows finish (records carry their id). A row whose request is invalid
(an :class:`~aligntime.errors.InputError`, e.g. too long for the model) is written
with its ``error`` and the batch goes on: asking again would fail again. Any other
failure (the backend down, a scorer failing under ``on_scorer_error: raise``)
stops the batch: the rows written so far stay, and the same command resumes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aligntime.aligner import Aligner
from aligntime.batch.output import RecordWriter
from aligntime.batch.records import error_record, row_record
from aligntime.batch.rows import BatchRow
from aligntime.errors import InputError
from aligntime.request import AlignRequest, RequestError
from aligntime.types import GenerationParams, Message

if TYPE_CHECKING:
    from aligntime.policy.schema import Policy


@dataclass
class BatchSummary:
    """What a batch run did: rows, outcomes, tokens and throughput."""

    rows: int = 0
    """Rows in the input."""
    skipped: int = 0
    """Rows already in the output (resumed), not aligned again."""
    aligned: int = 0
    """Rows aligned by this run."""
    refusals: int = 0
    """Of those, rows the input gate refused."""
    fallbacks: int = 0
    """Rows answered with the policy's fallback (no candidate passed the gates)."""
    errors: int = 0
    """Rows written with an error (an invalid request)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    """Wall seconds from the first row to the last written. In one process the models
    are loaded before this begins (see ``load_s``); on Ray each actor starts and loads
    its models inside it."""
    load_s: float | None = None
    """Seconds ``aligntime batch`` spent loading the models before the first row, in
    one process; None where loading is inside ``seconds`` (Ray) or done by the caller.
    ``load_s + seconds`` is the in-process figure to set beside a Ray run's ``seconds``."""

    @property
    def rows_per_s(self) -> float:
        """Rows aligned per second of this run."""
        return self.aligned / self.seconds if self.seconds > 0 else 0.0

    def add(self, record: dict[str, Any]) -> None:
        """Count one written record."""
        self.aligned += 1
        if record["error"] is not None:
            self.errors += 1
        elif record["refused"]:
            self.refusals += 1
        elif record["best"] is None:
            self.fallbacks += 1
        self.prompt_tokens += int(record["usage"]["prompt_tokens"])
        self.completion_tokens += int(record["usage"]["completion_tokens"])

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "seconds": round(self.seconds, 3),
            "load_s": None if self.load_s is None else round(self.load_s, 3),
            "rows_per_s": round(self.rows_per_s, 3),
        }


@dataclass(frozen=True)
class BatchOptions:
    """Settings for every row (``None``: the policy's own), and how many rows run at once.

    The per-request settings become each row's :class:`~aligntime.request.AlignRequest`
    (:meth:`request`), so a batch's requests are checked, and fail, exactly as
    ``aligntime run``'s and the server's are.
    """

    n: int | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    template: str | None = None
    concurrency: int = 4
    """Rows aligned at once (in one process, or in one Ray actor)."""

    def request(self, messages: Sequence[Message]) -> AlignRequest:
        """The request of one row: its conversation with these settings."""
        params = GenerationParams(self.max_tokens, self.temperature, seed=self.seed)
        return AlignRequest(list(messages), self.n, self.template, params)

    def check(self, policy: Policy) -> None:
        """Refuse, before any row or model, settings the policy cannot serve.

        Raises :class:`~aligntime.request.RequestError` naming the setting, with the
        aligner's own message (the one ``aligntime run`` gives).
        """
        if self.concurrency < 1:
            raise RequestError(
                "concurrency", f"concurrency must be at least 1, got {self.concurrency}"
            )
        self.request([Message("user", "a request")]).checked(policy)


async def align_row(aligner: Aligner, row: BatchRow, options: BatchOptions) -> dict[str, Any]:
    """The output record of one row (an invalid request becomes an error record)."""
    try:
        result = await aligner.aalign_request(options.request(row.messages))
    except InputError as exc:
        return error_record(row.id, aligner.policy.name, row.messages, str(exc))
    return row_record(row.id, result)


async def arun_batch(
    aligner: Aligner,
    rows: Sequence[BatchRow],
    output: Path,
    options: BatchOptions = BatchOptions(),
    on_row: Callable[[int, int], None] | None = None,
) -> BatchSummary:
    """Align the rows not yet in ``output``; ``on_row(done, total)`` after each one."""
    from aligntime.many import run_many

    if options.concurrency < 1:
        raise InputError(f"concurrency must be at least 1, got {options.concurrency}")
    writer = RecordWriter(output)
    done = writer.open()
    todo = [row for row in rows if row.id not in done]
    summary = BatchSummary(rows=len(rows), skipped=len(rows) - len(todo))
    started = time.perf_counter()

    async def one(row: BatchRow) -> None:
        record = await align_row(aligner, row, options)
        writer.write(record)
        summary.add(record)
        if on_row is not None:
            on_row(summary.skipped + summary.aligned, summary.rows)

    try:
        await run_many(one, todo, concurrency=options.concurrency, description="batch")
    finally:
        summary.seconds = time.perf_counter() - started
        writer.close()
    return summary


def run_batch(*args: Any, **kwargs: Any) -> BatchSummary:
    """Synchronous :func:`arun_batch` (the same arguments); works inside a running loop too."""
    from aligntime.background_loop import BackgroundLoop

    loop = BackgroundLoop("aligntime-batch")
    try:
        return loop.run(arun_batch(*args, **kwargs))
    finally:
        loop.stop()
