"""Audit durability: SIGKILL the real server process mid-load; nothing acknowledged is lost."""

from __future__ import annotations

import os
import signal
import sqlite3
import textwrap
import threading
import time
from pathlib import Path

import httpx

from aligntime.server.testing import serve_subprocess

POLICY = """
name: durable
generator: {backend: fake, delay_s: 0.01, responses: ["Boil it for seven minutes.", "Rest."]}
n: 3
scorers:
  - {name: rules, kind: rules}
"""


def test_sigkill_mid_load_loses_no_acknowledged_request(tmp_path: Path) -> None:
    policy = tmp_path / "durable.yaml"
    policy.write_text(textwrap.dedent(POLICY))
    db = tmp_path / "audit.db"
    proc, url = serve_subprocess(["--policy", str(policy), "--audit-db", str(db)])
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(i: int) -> None:
        with httpx.Client(base_url=url, timeout=10) as http:
            while not stop.is_set():
                try:
                    r = http.post(
                        "/v1/chat/completions",
                        json={
                            "model": "durable",
                            "messages": [{"role": "user", "content": f"q{i}"}],
                        },
                    )
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code == 200:
                    with lock:
                        acked.append(r.json()["id"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while len(acked) < 150 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # mid-load: requests are in flight
        proc.wait(timeout=10)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
        if proc.poll() is None:
            proc.kill()
    assert len(acked) >= 50, "too little load reached the server before the kill"
    conn = sqlite3.connect(db)
    stored = {row[0] for row in conn.execute("SELECT id FROM requests WHERE status = 200")}
    missing = [rid for rid in acked if rid not in stored]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged requests lost"
    per_request = dict(conn.execute("SELECT request_id, count(*) FROM candidates GROUP BY 1"))
    assert all(per_request.get(rid) == 3 for rid in acked)
    # Rows can only exceed acknowledgements by requests committed but not yet answered.
    assert len(stored) - len(acked) <= 16
