"""Align a data set: one output row per input row, resumable, in one process or on Ray.

:func:`run_batch` (and ``aligntime batch``) runs in this process with bounded
concurrency; :func:`aligntime.batch.ray_data.align_dataset` runs the same per-row
work on a Ray cluster. Both call the same :class:`~aligntime.aligner.Aligner` and
write the same records (:mod:`aligntime.batch.records`).
"""

from __future__ import annotations

from aligntime.batch.records import candidate_record, row_record
from aligntime.batch.rows import BatchRow, read_rows
from aligntime.batch.runner import BatchSummary, arun_batch, run_batch

__all__ = [
    "BatchRow",
    "BatchSummary",
    "arun_batch",
    "candidate_record",
    "read_rows",
    "row_record",
    "run_batch",
]
