"""Benchmark ``aligntime serve``: throughput, latency and time to first token over loopback.

The server runs as a second process (``python -m aligntime serve``); this process
drives closed-loop load from 1, 8 and 64 concurrent clients with a small
HTTP/1.1 keep-alive client on raw asyncio streams (an off-the-shelf client would
spend more CPU than the server on these 2 cores). Two workloads:

- ``fake``: the fake backend and the rules scorer, which isolates the server's
  own cost. Reported two ways: client-side closed-loop latency (which, with C
  clients, is about C / throughput whatever the server does), and the server's
  own overhead from its ``/metrics`` histograms: time inside the server minus
  time inside the Aligner, per request.
- ``default``: the real default policy (SmolLM2-135M on llama.cpp and its four
  scorers) at n = 2 and 32 tokens, streaming, with the audit log on: throughput,
  latency, time to first token, the server's input-gate, generation and scoring
  stage times (p50 and p99), errors, audit rows against acknowledged responses, and
  the server process's CPU seconds per answered request (user plus
  system time of every thread, from ``/proc``; Linux only). On a CPU-bound server
  throughput is cores / CPU seconds per request, so the latter says whether a
  change did less work or only arranged the same work differently.

Old and new in one run: ``--baseline REV`` also serves the package as of git revision
REV (unpacked with ``git archive``, imported through ``PYTHONPATH``) beside the working
tree, both with the same ``--policy``; each level runs ``--rounds`` alternating turns
(old-new, new-old, ...) so both sides see the same load on a shared machine, and
``default_new_over_old`` gives the throughput and median-latency ratios per level.

Usage: ``python bench/server.py [--only fake|default] [--fake-seconds S]
[--baseline REV [--rounds R]] [--policy P] [--prompts builtin:mixed]
[--default-levels 1:3,8:8]``. Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from aligntime.evaluation.datasets import load_prompts
from aligntime.server.testing import serve_subprocess

FAKE_POLICY = """
name: fake-bench
generator: {backend: fake, responses: ["Boil the egg for seven minutes, then cool it."]}
n: 3
scorers:
  - {name: rules, kind: rules}
"""

LEVELS = (1, 8, 64)


# --- a minimal HTTP/1.1 client -------------------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, path: str, body: bytes, stream: bool = False) -> dict[str, Any]:
        """Send one request; return status, body, and (streaming) time of the first content."""
        assert self.reader is not None and self.writer is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        started = time.perf_counter()
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        first_content: float | None = None
        first_byte: float | None = None
        if headers.get("transfer-encoding") == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                if size == 0:
                    await self.reader.readline()
                    break
                chunk = await self.reader.readexactly(size + 2)
                now = time.perf_counter()
                first_byte = first_byte or now
                if (
                    first_content is None
                    and b'"content": "' in chunk
                    and b'"content": ""' not in chunk
                ):
                    first_content = now
                parts.append(chunk[:-2])
            data = b"".join(parts)
        else:
            data = await self.reader.readexactly(int(headers.get("content-length", "0")))
        done = time.perf_counter()
        return {
            "status": status,
            "body": data,
            "latency": done - started,
            "ttfb": (first_byte - started) if first_byte else None,
            "ttft": (first_content - started) if first_content else None,
        }

    async def get(self, path: str) -> bytes:
        assert self.reader is not None and self.writer is not None
        self.writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        await self.reader.readline()
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        return await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# --- load -------------------------------------------------------------------------------------


async def closed_loop(
    host: str,
    port: int,
    make_body: Any,
    clients: int,
    *,
    total: int,
    seconds: float,
    stream: bool = False,
) -> dict[str, Any]:
    """``clients`` connections each sending its next request once the last one is answered."""
    conns = [Connection(host, port) for _ in range(clients)]
    await asyncio.gather(*(c.open() for c in conns))
    results: list[dict[str, Any]] = []
    issued = 0
    deadline = time.perf_counter() + seconds

    async def worker(conn: Connection, w: int) -> None:
        nonlocal issued
        while issued < total and time.perf_counter() < deadline:
            i = issued
            issued += 1
            results.append(await conn.post("/v1/chat/completions", make_body(i, w), stream))

    started = time.perf_counter()
    await asyncio.gather(*(worker(c, w) for w, c in enumerate(conns)))
    wall = time.perf_counter() - started
    for c in conns:
        c.close()
    # A stream's status is 200 before alignment starts; a failure after that (a time-out,
    # a backend error) arrives as an error event, so it counts as an error here.
    ok = [r for r in results if r["status"] == 200 and b'data: {"error"' not in r["body"]]
    lat = sorted(r["latency"] for r in ok)
    out: dict[str, Any] = {
        "clients": clients,
        "requests": len(results),
        "errors": len(results) - len(ok),
        "seconds": round(wall, 3),
        "throughput_rps": round(len(ok) / wall, 2) if wall else 0.0,
        "client_latency_ms": _pcts(lat),
    }
    ttft = sorted(r["ttft"] for r in ok if r["ttft"] is not None)
    if stream:
        out["ttft_ms"] = _pcts(ttft)
        out["first_byte_ms"] = _pcts(sorted(r["ttfb"] for r in ok if r["ttfb"] is not None))
    out["_ids"] = [_response_id(r["body"], stream) for r in ok]
    # Raw values (popped by merge's callers' output) so turns of one level can be pooled.
    out["_client_latency_ms"] = [1000 * v for v in lat]
    if stream:
        out["_ttft_ms"] = [1000 * v for v in ttft]
        out["_first_byte_ms"] = [1000 * r["ttfb"] for r in ok if r["ttfb"] is not None]
    return out


def _response_id(body: bytes, stream: bool) -> str | None:
    if not stream:
        return str(json.loads(body)["id"])
    found = re.search(rb'"id": "([^"]+)"', body)
    return found.group(1).decode() if found else None


def _pcts(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "mean": None}

    def pick(q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))]

    return {
        "p50": round(1000 * pick(0.50), 2),
        "p99": round(1000 * pick(0.99), 2),
        "mean": round(1000 * statistics.fmean(values), 2),
    }


# --- server metrics ---------------------------------------------------------------------------


def parse_histogram(text: str, stage: str) -> dict[float, float]:
    """Cumulative bucket counts of ``aligntime_stage_seconds{stage=...}``."""
    buckets: dict[float, float] = {}
    pattern = re.compile(
        r'aligntime_stage_seconds_bucket\{le="([^"]+)",stage="' + stage + r'"\} (\S+)'
    )
    for le, value in pattern.findall(text):
        buckets[float("inf") if le == "+Inf" else float(le)] = float(value)
    return buckets


def histogram_quantile(
    before: dict[float, float], after: dict[float, float], q: float
) -> float | None:
    """Quantile of the observations between two scrapes, linear within a bucket (like PromQL)."""
    edges = sorted(after)
    counts = [after[e] - before.get(e, 0.0) for e in edges]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    rank = q * total
    prev_edge, prev_count = 0.0, 0.0
    for edge, count in zip(edges, counts, strict=True):
        if count >= rank:
            if edge == float("inf"):
                return prev_edge
            width = count - prev_count
            frac = 0.0 if width <= 0 else (rank - prev_count) / width
            return prev_edge + (edge - prev_edge) * frac
        prev_edge, prev_count = edge, count
    return prev_edge


async def scrape(host: str, port: int) -> str:
    conn = Connection(host, port)
    await conn.open()
    try:
        return (await conn.get("/metrics")).decode()
    finally:
        conn.close()


# --- the runs -------------------------------------------------------------------------------


def start_server(args: list[str]) -> tuple[subprocess.Popen[str], str, int]:
    try:
        proc, url = serve_subprocess(args, timeout=600)
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from exc
    address = urlsplit(url)
    assert address.hostname is not None and address.port is not None
    return proc, address.hostname, address.port


def body_for(model: str, prompts: list[str] | None = None, **extra: Any) -> Any:
    """Request ``i`` of client ``w``: the egg question, or one of ``prompts`` (the same
    one for the same ``i`` and ``w`` on every run, so two sides get the same traffic)."""

    def make(i: int, w: int) -> bytes:
        if prompts:
            content = prompts[(w * 7919 + i * 104729) % len(prompts)]
        else:
            content = f"How do I boil an egg? (client {w}, request {i})"
        msg = {"role": "user", "content": content}
        return json.dumps({"model": model, "messages": [msg], **extra}).encode()

    return make


async def bench_fake(host: str, port: int, seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    make = body_for("fake-bench")
    # Warm-up: imports, first allocations, connection setup.
    await closed_loop(host, port, make, 8, total=200, seconds=10)
    for clients in LEVELS:
        before = await scrape(host, port)
        run = await closed_loop(host, port, make, clients, total=100_000, seconds=seconds)
        after = await scrape(host, port)
        run.pop("_ids")
        run["server"] = server_stages(before, after, ("overhead", "total", "align"))
        progress(f"fake, {clients} clients", run)
        stream = await closed_loop(
            host, port, body_for("fake-bench", stream=True), clients,
            total=max(50, 10 * clients), seconds=seconds / 2, stream=True,
        )  # fmt: skip
        stream.pop("_ids")
        run["stream"] = {k: stream[k] for k in ("requests", "errors", "ttft_ms", "first_byte_ms")}
        out[str(clients)] = run
    return out


def server_stages(before: str, after: str, stages: tuple[str, ...]) -> dict[str, Any]:
    """p50 and p99 (ms) of the server's stage histograms between two scrapes."""
    out: dict[str, Any] = {}
    for stage in stages:
        b, a = parse_histogram(before, stage), parse_histogram(after, stage)
        out[f"{stage}_ms"] = {
            name: None if v is None else round(1000 * v, 2)
            for name, v in (
                ("p50", histogram_quantile(b, a, 0.50)),
                ("p99", histogram_quantile(b, a, 0.99)),
            )
        }
    return out


class Side(NamedTuple):
    """One server under test: its address, audit log and process id."""

    host: str
    port: int
    db: Path
    pid: int


def process_cpu_s(pid: int) -> float | None:
    """User plus system CPU seconds of process ``pid`` so far, every thread counted
    (``None`` where ``/proc`` does not say: not on Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces) start at field 3; utime
    # and stime are fields 14 and 15.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bench_default(
    sides: dict[str, Side],
    levels: list[tuple[int, int]],
    rounds: int = 1,
    prompts: list[str] | None = None,
) -> dict[str, Any]:
    """Each level on every side; with two sides (old and new), ``rounds`` alternating turns
    (old-new, new-old, ...) per level, so both see the same machine load. ``prompts``:
    the requests' texts (default: the egg question)."""
    make = body_for("default", prompts, best_of=2, max_tokens=32, stream=True)  # 2 sampled
    for side in sides.values():
        await closed_loop(side.host, side.port, make, 1, total=1, seconds=300, stream=True)
    out: dict[str, dict[str, Any]] = {name: {} for name in sides}
    acked: dict[str, list[str]] = {name: [] for name in sides}
    for clients, total in levels:
        turns: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
        for r in range(rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for name in order:
                side = sides[name]
                before = await scrape(side.host, side.port)
                cpu_before = process_cpu_s(side.pid)
                run = await closed_loop(
                    side.host, side.port, make, clients, total=total, seconds=1800, stream=True
                )
                cpu_after = process_cpu_s(side.pid)
                after = await scrape(side.host, side.port)
                run["server"] = server_stages(before, after, ("input", "generate", "score"))
                if cpu_before is not None and cpu_after is not None:
                    run["_cpu_s"] = cpu_after - cpu_before
                    answered = run["requests"] - run["errors"]
                    run["cpu_s_per_request"] = (
                        round(run["_cpu_s"] / answered, 3) if answered else None
                    )
                acked[name] += [i for i in run.pop("_ids") if i]
                turns[name].append(run)
                progress(f"default ({name}), {clients} clients, turn {r + 1}", run)
        for name, runs in turns.items():
            out[name][str(clients)] = merge(runs)
    for name, side in sides.items():
        conn = sqlite3.connect(side.db)
        stored = {r[0] for r in conn.execute("SELECT id FROM requests WHERE status = 200")}
        out[name]["audit"] = {
            "acknowledged": len(acked[name]),
            "rows": len(stored),
            "lost": len([i for i in acked[name] if i not in stored]),
        }
    return out


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Turns of one level on one side as one run: summed requests and seconds, percentiles
    over every request."""
    if len(runs) == 1:
        return runs[0]
    ok = sum(r["requests"] - r["errors"] for r in runs)
    wall = sum(r["seconds"] for r in runs)
    merged: dict[str, Any] = {
        "clients": runs[0]["clients"],
        "requests": sum(r["requests"] for r in runs),
        "errors": sum(r["errors"] for r in runs),
        "seconds": round(wall, 3),
        "throughput_rps": round(ok / wall, 2) if wall else 0.0,
    }
    for key in ("client_latency_ms", "ttft_ms", "first_byte_ms"):
        merged[key] = _pcts(sorted(v / 1000 for r in runs for v in r.get("_" + key, [])))
    if ok and all("_cpu_s" in r for r in runs):
        merged["cpu_s_per_request"] = round(sum(r["_cpu_s"] for r in runs) / ok, 3)
    merged["turns"] = [
        {"throughput_rps": r["throughput_rps"], "p50_ms": r["client_latency_ms"]["p50"]}
        for r in runs
    ]
    return merged


def ratios(new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """New over old per level: throughput, median latency and CPU seconds per request."""
    out: dict[str, Any] = {}
    for level, run in new.items():
        base = old.get(level)
        if level == "audit" or not base or not base["throughput_rps"]:
            continue
        p50, base_p50 = run["client_latency_ms"]["p50"], base["client_latency_ms"]["p50"]
        cpu, base_cpu = run.get("cpu_s_per_request"), base.get("cpu_s_per_request")
        out[level] = {
            "throughput": round(run["throughput_rps"] / base["throughput_rps"], 3),
            "p50_latency": round(p50 / base_p50, 3) if p50 and base_p50 else None,
            "cpu_per_request": round(cpu / base_cpu, 3) if cpu and base_cpu else None,
        }
    return out


def baseline_source(rev: str, into: Path) -> Path:
    """The package's ``src`` folder at git revision ``rev``, unpacked under ``into``."""
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", "--format=tar", rev, "src"],
        check=True,
        capture_output=True,
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def start_side(args: list[str], db: Path, source: Path | None = None) -> tuple[Any, Side]:
    """A server for the default run; ``source``: import the package from there (the old side)."""
    saved = os.environ.get("PYTHONPATH")
    if source is not None:
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), saved]))
    try:
        proc, host, port = start_server([*args, "--audit-db", str(db)])
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    return proc, Side(host, port, db, proc.pid)


def progress(label: str, figures: dict[str, Any]) -> None:
    """Each level's figures on stderr as soon as they exist (long runs can be cut short)."""
    shown = {k: v for k, v in figures.items() if not k.startswith("_")}
    sys.stderr.write(f"{label}: {json.dumps(shown)}\n")
    sys.stderr.flush()


def _strip(report: dict[str, Any]) -> None:
    """Drop the raw per-request values kept for merging."""
    for key in list(report):
        if key.startswith("_"):
            del report[key]
        elif isinstance(report[key], dict):
            _strip(report[key])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["fake", "default"])
    parser.add_argument("--fake-seconds", type=float, default=8.0)
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="the server's --timeout for the default run"
    )
    parser.add_argument(
        "--default-levels",
        default="1:3,8:8,64:64",
        help="clients:requests pairs for the default policy (default 1:3,8:8,64:64)",
    )
    parser.add_argument("--policy", default="default", help="policy of the default run")
    parser.add_argument(
        "--prompts",
        help="the default run's requests, from a prompt set (e.g. builtin:mixed; a request "
        "refused by the input gate is answered at once) instead of the egg question",
    )
    parser.add_argument(
        "--baseline",
        metavar="REV",
        help="also serve the package as of git revision REV (old) beside the working tree "
        "(new), in alternating turns, and report new over old",
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternating turns per level with --baseline"
    )
    args = parser.parse_args(argv)
    report: dict[str, Any] = {"cpu_count": os.cpu_count(), "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "fake"):
            policy = Path(tmp) / "fake.yaml"
            policy.write_text(FAKE_POLICY)
            proc, host, port = start_server(["--policy", str(policy)])
            try:
                report["fake"] = asyncio.run(bench_fake(host, port, args.fake_seconds))
            finally:
                proc.terminate()
                proc.wait(timeout=30)
        if args.only in (None, "default"):
            levels = [
                (int(c), int(r))
                for c, r in (pair.split(":") for pair in args.default_levels.split(","))
            ]
            serve = ["--policy", args.policy, "--timeout", str(args.timeout)]
            procs: list[Any] = []
            sides: dict[str, Side] = {}
            try:
                if args.baseline:
                    source = baseline_source(args.baseline, Path(tmp))
                    proc, sides["old"] = start_side(serve, Path(tmp) / "old.db", source)
                    procs.append(proc)
                proc, sides["new"] = start_side(serve, Path(tmp) / "audit.db")
                procs.append(proc)
                rounds = args.rounds if args.baseline else 1
                texts = [p.prompt for p in load_prompts(args.prompts)] if args.prompts else None
                runs = asyncio.run(bench_default(sides, levels, rounds, texts))
            finally:
                for proc in procs:
                    proc.terminate()
                    proc.wait(timeout=60)
            report["default"] = runs["new"]
            if args.baseline:
                report["default_baseline"] = {"revision": args.baseline, **runs["old"]}
                report["default_new_over_old"] = ratios(runs["new"], runs["old"])
    _strip(report)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
