"""``aligntime batch`` in one process, on the fake backend: records, resume, Parquet, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aligntime.aligner import Aligner
from aligntime.batch import read_rows, run_batch
from aligntime.batch.output import read_records
from aligntime.batch.runner import BatchOptions
from aligntime.errors import BackendError, InputError

POLICY = """
name: batch-test
generator:
  backend: fake
  responses:
    - "Keep the child hydrated, let them rest, and call a doctor if the fever is high."
    - "the the the the the the the the the the the the the the the the"
n: 2
max_n: 4
scorers:
  - {name: rules, kind: rules, max_repetition: 0.3, gate: {min: 0.5}}
fallback: "Sorry, no good answer."
"""


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "aligntime", "batch", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(POLICY))
    return path


def write_rows(path: Path, count: int) -> Path:
    lines = []
    for i in range(count):
        if i % 2:
            row = {"id": f"r{i}", "messages": [{"role": "user", "content": f"Question {i}?"}]}
        else:
            row = {"id": f"r{i}", "prompt": f"Question {i}?"}
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_cli_writes_one_record_per_row_with_every_candidate(policy: Path, tmp_path: Path) -> None:
    rows = write_rows(tmp_path / "in.jsonl", 5)
    out = tmp_path / "out.jsonl"
    proc = cli("-i", str(rows), "-o", str(out), "-p", str(policy), "--json", "-c", "2")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["rows"] == summary["aligned"] == 5 and summary["skipped"] == 0
    assert summary["completion_tokens"] > 0 and summary["rows_per_s"] > 0
    # in one process the models load before the timed rows, and the summary says how long
    assert isinstance(summary["load_s"], float) and summary["load_s"] >= 0
    records = read_records(out)
    assert sorted(r["id"] for r in records) == [f"r{i}" for i in range(5)]
    for r in records:
        assert r["best"] == 0 and r["text"].startswith("Keep the child")
        assert [c["passed"] for c in r["candidates"]] == [True, False]
        assert r["candidates"][1]["gate_failures"] == ["rules"]
        assert set(r["usage"]) == {"prompt_tokens", "completion_tokens"}
        assert r["messages"][-1]["content"].startswith("Question")


def test_resume_skips_written_rows_and_repairs_a_cut_last_line(
    policy: Path, tmp_path: Path
) -> None:
    rows = write_rows(tmp_path / "in.jsonl", 4)
    out = tmp_path / "out.jsonl"
    assert cli("-i", str(rows), "-o", str(out), "-p", str(policy)).returncode == 0
    lines = out.read_text().splitlines(keepends=True)
    kept = {json.loads(line)["id"] for line in lines[:2]}
    out.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])  # killed mid-write
    proc = cli("-i", str(rows), "-o", str(out), "-p", str(policy), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["skipped"] == 2 and summary["aligned"] == 2
    ids = [r["id"] for r in read_records(out)]
    assert sorted(ids) == [f"r{i}" for i in range(4)]  # each exactly once
    assert set(ids[:2]) == kept


def test_parquet_in_and_out(policy: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist([{"id": i, "prompt": f"Q{i}?"} for i in range(3)]), source)
    out = tmp_path / "out.parquet"
    assert cli("-i", str(source), "-o", str(out), "-p", str(policy)).returncode == 0
    table = pq.read_table(out)
    assert sorted(table.column("id").to_pylist()) == ["0", "1", "2"]
    assert not (tmp_path / "out.parquet.partial.jsonl").exists()
    records = read_records(out)
    assert all(len(r["candidates"]) == 2 for r in records)
    proc = cli("-i", str(source), "-o", str(out), "-p", str(policy), "--json")
    assert json.loads(proc.stdout)["skipped"] == 3
    assert len(read_records(out)) == 3


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "a"}', "in.jsonl:2: give exactly one of 'prompt'"),
        ('{"id": "x", "prompt": "again"}', "in.jsonl:2: id 'x' was already used at"),
        ('{"id": "b", "messages": [{"role": "bot", "content": "hi"}]}', "messages[0] must be"),
        ("not json", "in.jsonl:2: not valid JSON"),
    ],
)
def test_a_malformed_row_names_its_line_and_exits_2(
    policy: Path, tmp_path: Path, line: str, message: str
) -> None:
    rows = tmp_path / "in.jsonl"
    rows.write_text('{"id": "x", "prompt": "fine"}\n' + line + "\n")
    proc = cli("-i", str(rows), "-o", str(tmp_path / "o.jsonl"), "-p", str(policy))
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_a_failing_backend_stops_the_batch_and_the_next_run_resumes(
    policy: Path, tmp_path: Path
) -> None:
    rows = read_rows(write_rows(tmp_path / "in.jsonl", 6))
    out = tmp_path / "out.jsonl"
    with Aligner.from_policy(policy) as al:
        calls = {"n": 0}
        generate = al.generator.generate

        async def flaky(*args: object, **kwargs: object) -> object:
            calls["n"] += 1
            if calls["n"] == 4:
                raise BackendError("the server went away")
            return await generate(*args, **kwargs)  # type: ignore[arg-type]

        al.generator.generate = flaky  # type: ignore[method-assign]
        with pytest.raises(BackendError):
            run_batch(al, rows, out, BatchOptions(concurrency=1))
        assert len(read_records(out)) == 3
        summary = run_batch(al, rows, out, BatchOptions(concurrency=2))
    assert summary.skipped == 3 and summary.aligned == 3
    assert sorted(r["id"] for r in read_records(out)) == [f"r{i}" for i in range(6)]


def test_fallbacks_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    good = '"Keep the child hydrated, let them rest, and call a doctor if the fever is high."'
    path.write_text(textwrap.dedent(POLICY).replace(good, '"bad bad bad bad bad bad bad bad"'))
    rows = read_rows(write_rows(tmp_path / "in.jsonl", 2))
    with Aligner.from_policy(path) as al:
        summary = run_batch(al, rows, tmp_path / "o.jsonl")
    assert summary.fallbacks == 2
    assert {r["text"] for r in read_records(tmp_path / "o.jsonl")} == {"Sorry, no good answer."}


def test_read_rows_rejects_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_rows(tmp_path / "nope.jsonl")


def test_records_with_unicode_line_separators_in_their_text_read_back(tmp_path: Path) -> None:
    # JSON written with ensure_ascii=False keeps U+2028 and U+0085 raw; they are not
    # line ends of a JSONL file (a random model's answer can hold them).
    odd = "Rest\u2028and\x85fluids\u2029help."
    path = tmp_path / "p.yaml"
    escaped = "Rest\\u2028and\\x85fluids\\u2029help."  # YAML's escapes of the same text
    path.write_text(f'name: odd\ngenerator: {{backend: fake, responses: ["{escaped}"]}}\nn: 1\n')
    rows = read_rows(write_rows(tmp_path / "in.jsonl", 3))
    out = tmp_path / "o.jsonl"
    with Aligner.from_policy(path) as al:
        run_batch(al, rows, out)
        again = run_batch(al, rows, out)  # resumes: reads every record back
    assert again.skipped == 3
    assert [r["text"] for r in read_records(out)] == [odd] * 3
