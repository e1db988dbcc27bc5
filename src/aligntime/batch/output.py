"""Writing records as they are made, so that an interrupted batch resumes where it stopped.

JSONL output is appended one line per row, flushed at once. On resume, a last line
cut short by the interruption is removed and the ids already written are skipped.
Parquet cannot be appended to, so a Parquet output is assembled from a JSONL file
beside it (``OUT.parquet.partial.jsonl``) when the batch ends; the nested fields
(``messages``, ``candidates``, ``usage``, ``timings``, ``input``) are JSON text in
their columns, which keeps one schema whatever scorers a policy has.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, TextIO

from aligntime.batch.records import NESTED
from aligntime.batch.rows import is_parquet, require_pyarrow
from aligntime.errors import InputError
from aligntime.evaluation.runner import _repair_tail as repair_tail

log = logging.getLogger(__name__)


class RecordWriter:
    """Appends records to a batch's output; knows which ids are already there."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.parquet = is_parquet(path)
        self.journal = path.with_name(path.name + ".partial.jsonl") if self.parquet else path
        self._file: TextIO | None = None
        self.done: set[str] = set()
        self._previous: list[dict[str, Any]] = []

    def open(self) -> set[str]:
        """Open for appending; return the ids already written (skipped on resume)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.parquet and self.path.is_file():
            self._previous = read_records(self.path)
            self.done.update(str(r["id"]) for r in self._previous)
        repair_tail(self.journal)  # the evaluation runner's: a cut last line goes
        for record in read_records(self.journal) if self.journal.is_file() else []:
            self.done.add(str(record["id"]))
        self._file = self.journal.open("a", encoding="utf-8")
        return set(self.done)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record and flush it, so a crash loses at most the row in flight."""
        assert self._file is not None, "open() first"
        self._file.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
        self._file.flush()
        self.done.add(str(record["id"]))

    def close(self) -> None:
        """Close the file; a Parquet output is written from the journal now."""
        if self._file is None:
            return
        self._file.close()
        self._file = None
        if self.parquet:
            records = self._previous + read_records(self.journal)
            write_parquet(self.path, records)
            self.journal.unlink()


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every record of a batch output (JSONL, or Parquet with JSON-text nested columns)."""
    if path.is_dir():  # a Ray run's output: one file per write task
        files = sorted(p for p in path.iterdir() if p.suffix in (".json", ".jsonl", ".parquet"))
        return [record for file in files for record in read_records(file)]
    if is_parquet(path):
        pq = require_pyarrow("reading a Parquet batch output")
        return [_nested(row) for row in pq.read_table(path).to_pylist()]
    records = []
    text = path.read_text(encoding="utf-8")
    # Only "\n" ends a record: str.splitlines would also cut at U+2028, U+0085 and the
    # like, which JSON written with ensure_ascii=False keeps raw inside model text.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise InputError(f"{path}:{number}: not a batch output line ({exc})") from exc
        if not isinstance(record, dict) or "id" not in record:
            raise InputError(f"{path}:{number}: not a batch output record (no 'id')")
        records.append(_nested(record))
    return records


def _nested(record: dict[str, Any]) -> dict[str, Any]:
    """Nested fields written as JSON text (Parquet, Ray's JSON writer) parsed back."""
    for key in NESTED:
        if isinstance(record.get(key), str):
            record[key] = json.loads(record[key])
    return record


def flat_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record with its nested fields as JSON text: one column type whatever the policy."""
    return {k: json.dumps(v, ensure_ascii=False) if k in NESTED else v for k, v in record.items()}


def write_parquet(path: Path, records: list[dict[str, Any]]) -> None:
    """Records as a Parquet file, nested fields as JSON text."""
    pq = require_pyarrow("writing Parquet output")
    import pyarrow as pa

    flat = [flat_record(r) for r in records]
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(pa.Table.from_pylist(flat), tmp)
    tmp.replace(path)  # never a half-written Parquet file under the real name
