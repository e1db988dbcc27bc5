"""Soak ``aligntime serve``: mixed good and bad requests for minutes, then SIGTERM.

The server runs as a process of its own with the audit log on (the fake backend
by default, so the server's own code is what is soaked). ``--clients``
keep-alive connections send requests in a fixed rotation of good ones (plain,
streamed, a single stop string, non-ASCII text, every candidate returned) and
bad ones (lone surrogates in content and ``user``, broken JSON, an unknown
model, an empty stop string, too many candidates, an unknown role, no
messages, a body over the size limit, a surrogate in a streamed request).

It reports, for the measured period after a warm-up:

- errors on good requests (anything but a complete 200; target 0) and bad
  requests that were not the expected 4xx (a 5xx or a dropped connection; target 0);
- the server's resident memory after the warm-up and at the end (target: growth
  of at most 10%), sampled every few seconds;
- acknowledged answers missing from the audit database (target 0), checked
  after a SIGTERM shut the server down.

A full run is 10 minutes at 32 clients: ``python bench/soak.py``. Options:
``--duration S``, ``--clients C``, ``--warmup S``, ``--policy FILE`` (another
policy; its name must be ``soak``). Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from server import Connection, progress, start_server  # bench/server.py

FAKE_POLICY = """
name: soak
generator:
  backend: fake
  responses:
    - "Boil the egg for seven minutes, then cool it in cold water."
    - "Lower the egg into simmering water; seven minutes gives a firm yolk."
n: 3
scorers:
  - {name: rules, kind: rules}
"""
MAX_BODY = 65_536
"""The server's --max-body-bytes in the soak (the oversized request exceeds it)."""
CHAT = "/v1/chat/completions"


def _body(**fields: Any) -> bytes:
    base: dict[str, Any] = {
        "model": "soak",
        "messages": [{"role": "user", "content": "How do I boil an egg?"}],
    }
    # json.dumps escapes a lone surrogate as \\ud800: valid JSON, as clients send it.
    return json.dumps({**base, **fields}).encode()


@dataclass(frozen=True)
class Kind:
    """One kind of request in the rotation and the status it must get."""

    name: str
    body: Callable[[int], bytes]
    expect: int = 200
    stream: bool = False

    @property
    def good(self) -> bool:
        return self.expect == 200


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


KINDS = [
    Kind("plain", lambda i: _body(messages=_user(f"How do I boil egg number {i}?"))),
    Kind("surrogate_content", lambda i: _body(messages=_user(f"egg {i} \ud800")), 400),
    Kind("stream", lambda i: _body(stream=True, messages=_user(f"Egg {i}, streamed?")), 200, True),
    Kind("broken_json", lambda i: b'{"model": "soak", "messages": [', 400),
    Kind("stop_string", lambda i: _body(stop="Human:")),
    Kind("surrogate_user", lambda i: _body(user=f"u{i}\udc00"), 400),
    Kind("unicode", lambda i: _body(messages=_user(f"\u202eégg {i} \U0001f95a\u200b\x00?"))),
    Kind("unknown_model", lambda i: _body(model=f"gpt-{i}"), 404),
    Kind("candidates", lambda i: _body(aligntime={"return_candidates": True})),
    Kind("empty_stop", lambda i: _body(stop=[""]), 400),
    Kind("plain_n2", lambda i: _body(best_of=2, seed=i)),
    Kind("too_many", lambda i: _body(n=10_000), 400),
    Kind("bad_role", lambda i: _body(messages=[{"role": "robot", "content": "hi"}]), 400),
    Kind("no_messages", lambda i: _body(messages=[]), 400),
    Kind("oversized", lambda i: _body(messages=_user("x" * (MAX_BODY + 10))), 413),
    Kind("stream_surrogate", lambda i: _body(stream=True, messages=_user("\ud83d")), 400, True),
]


@dataclass
class Tally:
    """What happened, per kind, in the measured period."""

    sent: Counter[str] = field(default_factory=Counter)
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    failures: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    acked: list[str] = field(default_factory=list)

    def failed(self, kind: str, why: str) -> None:
        self.failures[kind] += 1
        self.examples.setdefault(kind, why[:300])


def _judge(kind: Kind, response: dict[str, Any]) -> tuple[str | None, str | None]:
    """(acknowledged id, failure) of one response."""
    status, body = response["status"], response["body"]
    if status != kind.expect:
        return None, f"status {status}, expected {kind.expect}: {body[:200]!r}"
    if not kind.good:
        error = json.loads(body).get("error")
        return None, None if isinstance(error, dict) else f"no error object: {body[:200]!r}"
    if not kind.stream:
        return str(json.loads(body)["id"]), None
    events = [e[6:] for e in body.decode().split("\n\n") if e.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return None, f"the stream did not end with [DONE]: {body[-200:]!r}"
    chunks = [json.loads(e) for e in events[:-1]]
    if any("error" in c for c in chunks):
        return None, f"error event: {events[-2][:200]}"
    return str(chunks[0]["id"]), None


async def worker(
    host: str, port: int, w: int, stop_at: float, tally: Tally | None, counter: list[int]
) -> None:
    """Send the rotation, starting at kind ``w``, until ``stop_at``; count into ``tally``."""
    conn = Connection(host, port)
    await conn.open()
    i = w
    try:
        while time.monotonic() < stop_at:
            kind = KINDS[i % len(KINDS)]
            n = counter[0]
            counter[0] += 1
            i += 1
            try:
                response = await asyncio.wait_for(
                    conn.post(CHAT, kind.body(n), kind.stream), timeout=60
                )
            except (OSError, EOFError, ValueError, TimeoutError) as exc:
                response = None
                failure: str | None = f"transport: {type(exc).__name__}: {exc}"
                rid = None
            else:
                rid, failure = _judge(kind, response)
            if tally is not None:
                tally.sent[kind.name] += 1
                if response is not None:
                    tally.statuses.setdefault(kind.name, Counter())[response["status"]] += 1
                if failure:
                    tally.failed(kind.name, failure)
                if rid:
                    tally.acked.append(rid)
            if response is None or not kind.good:
                # A refused request may leave the connection closed or with an unread body.
                conn.close()
                conn = Connection(host, port)
                await conn.open()
    finally:
        conn.close()


def rss_mib(pid: int) -> float:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def sample_rss(pid: int, stop_at: float, into: list[tuple[float, float]]) -> None:
    started = time.monotonic()
    while time.monotonic() < stop_at:
        into.append((round(time.monotonic() - started, 1), round(rss_mib(pid), 1)))
        await asyncio.sleep(min(5.0, max(0.0, stop_at - time.monotonic())))


async def soak(
    host: str, port: int, pid: int, clients: int, warmup: float, duration: float
) -> dict[str, Any]:
    counter = [0]
    rss_boot = rss_mib(pid)
    stop_warm = time.monotonic() + warmup
    await asyncio.gather(*(worker(host, port, w, stop_warm, None, counter) for w in range(clients)))
    rss_start = rss_mib(pid)
    tally = Tally()
    samples: list[tuple[float, float]] = []
    started = time.monotonic()
    stop_at = started + duration
    await asyncio.gather(
        sample_rss(pid, stop_at, samples),
        *(worker(host, port, w, stop_at, tally, counter) for w in range(clients)),
    )
    wall = time.monotonic() - started
    rss_end = rss_mib(pid)
    good = [k.name for k in KINDS if k.good]
    bad = [k.name for k in KINDS if not k.good]
    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": sum(tally.sent.values()),
        "requests_per_s": round(sum(tally.sent.values()) / wall, 1),
        "good": {
            "sent": sum(tally.sent[k] for k in good),
            "errors": sum(tally.failures[k] for k in good),
        },
        "bad": {
            "sent": sum(tally.sent[k] for k in bad),
            "unexpected": sum(tally.failures[k] for k in bad),
            "server_errors_5xx": sum(
                n for k in bad for s, n in tally.statuses.get(k, Counter()).items() if s >= 500
            ),
        },
        "per_kind": {
            k.name: {
                "expect": k.expect,
                "statuses": dict(tally.statuses.get(k.name, Counter())),
                "failures": tally.failures[k.name],
            }
            for k in KINDS
        },
        "failure_examples": tally.examples,
        "rss_mib": {
            "after_boot": round(rss_boot, 1),
            "start": round(rss_start, 1),
            "end": round(rss_end, 1),
            "growth_pct": round(100 * (rss_end - rss_start) / rss_start, 2),
            "max": max(v for _, v in samples) if samples else None,
            "samples": samples,
        },
        "_acked": tally.acked,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="measured seconds")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument(
        "--warmup", type=float, default=None, help="seconds before RSS_start (default: 10%%)"
    )
    parser.add_argument("--policy", type=Path, help="a policy named 'soak' (default: fake)")
    args = parser.parse_args()
    warmup = args.warmup if args.warmup is not None else min(60.0, args.duration / 10)
    report: dict[str, Any] = {"cpu_count": os.cpu_count(), "python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        policy = args.policy or Path(tmp) / "soak.yaml"
        if args.policy is None:
            policy.write_text(FAKE_POLICY)
        db = Path(tmp) / "audit.db"
        proc, host, port = start_server(
            ["--policy", str(policy), "--audit-db", str(db),
             "--max-body-bytes", str(MAX_BODY), "--shutdown-timeout", "10",
             "--anonymous-rights", "candidates"]
        )  # fmt: skip
        try:
            result = asyncio.run(soak(host, port, proc.pid, args.clients, warmup, args.duration))
            acked = result.pop("_acked")
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
            result["shutdown"] = {
                "seconds": round(time.monotonic() - signalled, 2),
                "exit": proc.returncode,
            }
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
        conn = sqlite3.connect(db)
        stored = {r[0] for r in conn.execute("SELECT id FROM requests WHERE status = 200")}
        conn.close()
        result["audit"] = {
            "acknowledged": len(acked),
            "rows_200": len(stored),
            "lost": len([i for i in acked if i not in stored]),
        }
        progress("soak", {k: result[k] for k in ("requests", "good", "bad", "audit")})
    report["soak"] = result
    report["targets_met"] = {
        "no_errors_on_good_requests": result["good"]["errors"] == 0,
        "no_unexpected_answers_to_bad_requests": result["bad"]["unexpected"] == 0,
        "rss_growth_at_most_10_pct": result["rss_mib"]["growth_pct"] <= 10.0,
        "no_audit_rows_lost": result["audit"]["lost"] == 0,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
