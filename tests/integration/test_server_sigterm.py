"""SIGTERM to the real server process: drain, then answer what is left (issue 18, item 6).

On SIGTERM the server stops accepting connections, lets requests in flight
finish for ``--shutdown-timeout`` seconds, then answers those still running
with a 503 (an error event on a stream) and audits them as aborted.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from aligntime.server.testing import serve_subprocess

SLOW = """
name: slow
generator: {backend: fake, delay_s: 6.0, responses: ["Boil it for seven minutes."]}
n: 1
scorers:
  - {name: rules, kind: rules}
"""
QUICK = """
name: quick
generator: {backend: fake, delay_s: 0.8, responses: ["Poach it for three minutes."]}
n: 1
scorers:
  - {name: rules, kind: rules}
"""


def test_sigterm_drains_then_answers_the_rest_with_503_and_audits_them(tmp_path: Path) -> None:
    for name, text in (("slow", SLOW), ("quick", QUICK)):
        (tmp_path / f"{name}.yaml").write_text(textwrap.dedent(text))
    db = tmp_path / "audit.db"
    proc, url = serve_subprocess(
        [
            "--policy",
            str(tmp_path / "slow.yaml"),
            "--policy",
            str(tmp_path / "quick.yaml"),
            "--audit-db",
            str(db),
            "--shutdown-timeout",
            "1.5",
        ]
    )
    results: dict[str, Any] = {}

    def call(key: str, model: str, stream: bool = False) -> None:
        body = {"model": model, "messages": [{"role": "user", "content": f"egg {key}"}]}
        try:
            with httpx.stream(
                "POST", url + "/v1/chat/completions", json={**body, "stream": stream}, timeout=20
            ) as r:
                results[key] = (r.status_code, r.read().decode(), time.monotonic())
        except httpx.HTTPError as exc:  # pragma: no cover - reported by the asserts below
            results[key] = (None, repr(exc), time.monotonic())

    calls = [("slow1", "slow"), ("slow2", "slow"), ("quick", "quick")]
    threads = [threading.Thread(target=call, args=c) for c in calls]
    threads.append(threading.Thread(target=call, args=("stream", "slow", True)))
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while "aligntime_requests_in_flight 4.0" not in httpx.get(url + "/metrics").text:
            assert time.monotonic() < deadline, "the requests did not all arrive"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):  # no new connections
            httpx.get(url + "/healthz", timeout=2)
        for t in threads:
            t.join(timeout=20)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    status, text, at = results["quick"]
    assert status == 200 and "three minutes" in text, results  # finished in the grace period
    for key in ("slow1", "slow2"):
        status, text, at = results[key]
        assert status == 503, (key, text)
        assert json.loads(text)["error"]["code"] == "shutting_down"
        assert 1.2 < at - signalled < 4.5  # after the grace period, long before the backend
    status, text, at = results["stream"]
    lines = [line for line in text.splitlines() if line]
    assert status == 200 and '"shutting_down"' in lines[-2] and lines[-1] == "data: [DONE]"
    rows = sqlite3.connect(db).execute("SELECT model, status, error FROM requests").fetchall()
    assert sorted((m, s) for m, s, _ in rows) == [
        ("quick", 200), ("slow", 503), ("slow", 503), ("slow", 503)
    ]  # fmt: skip
    assert all("aborted" in (e or "") for m, s, e in rows if s == 503)
