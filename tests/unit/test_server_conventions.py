"""OpenAI conventions and long requests: n choices and best_of, GET /v1/models/{id},
x-request-id, keep-alive comments while a stream is aligned, and a client that leaves
(audited as 499, its work cancelled). A live server on loopback, fake backend."""

from __future__ import annotations

import itertools
import json
import socket
import sqlite3
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aligntime.server import ServerOptions, app_from_policies
from aligntime.server.testing import LiveServer

POLICY = """
name: quick
generator:
  backend: fake
  responses:
    - "Keep the child hydrated and call a doctor if the fever is high."
    - "You idiot, figure it out yourself, damn it."
    - "Rest, fluids, and a doctor if it lasts."
    - "Keep the child hydrated and call a doctor if the fever is high."
n: 4
max_n: 6
scorers:
  - {name: safety, kind: classifier, weight: 0.5, gate: {max: 0.6}}
  - {name: rules, kind: rules}
fallback: Sorry, no good answer.
"""
SLOW = """
name: slow
generator: {backend: fake, delay_s: 1.6, responses: ["Rest and drink water."]}
n: 1
scorers:
  - {name: rules, kind: rules}
"""
ASK = [{"role": "user", "content": "My child has a fever."}]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Path]]:
    folder = tmp_path_factory.mktemp("conventions")
    (folder / "quick.yaml").write_text(textwrap.dedent(POLICY))
    (folder / "slow.yaml").write_text(textwrap.dedent(SLOW))
    db = folder / "audit.db"
    options = ServerOptions(audit_db=db, keepalive_s=0.3, anonymous_rights={"candidates"})
    app = app_from_policies([folder / "quick.yaml", folder / "slow.yaml"], options)
    app.state.service.load()
    with LiveServer(app) as server:
        yield server, db


def _post(server: LiveServer, **body: Any) -> httpx.Response:
    payload = {"model": "quick", "messages": ASK, **body}
    return httpx.post(server.url + "/v1/chat/completions", json=payload, timeout=30)


def _stream_lines(server: LiveServer, payload: dict[str, Any]) -> list[tuple[float, str]]:
    """Each non-empty line of a streamed completion, with the seconds it arrived after."""
    arrivals: list[tuple[float, str]] = []
    started = time.monotonic()
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=payload,
                      timeout=30) as res:  # fmt: skip
        for line in res.iter_lines():
            if line:
                arrivals.append((time.monotonic() - started, line))
    return arrivals


def _row(db: Path, rid: str, wait: float = 5.0) -> dict[str, Any] | None:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as conn:
            conn.row_factory = sqlite3.Row
            row = conn.execute("SELECT * FROM requests WHERE id = ?", (rid,)).fetchone()
        if row is not None:
            return dict(row)
        time.sleep(0.05)
    return None


# --- n, best_of -----------------------------------------------------------------------------


def test_n_is_the_number_of_distinct_eligible_choices(live: tuple[LiveServer, Path]) -> None:
    server, _ = live
    body = _post(server, n=2, aligntime={"return_candidates": True}).json()
    texts = [c["message"]["content"] for c in body["choices"]]
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert set(texts) == {
        "Keep the child hydrated and call a doctor if the fever is high.",
        "Rest, fluids, and a doctor if it lasts.",
    }
    cands = body["aligntime"]["candidates"]
    assert texts[0] == cands[body["aligntime"]["best"]]["text"]  # the aligned answer first
    passed = sorted((c for c in cands if c["passed"]), key=lambda c: -c["score"])
    assert texts[1] == next(c["text"] for c in passed if c["text"] != texts[0])
    assert body["aligntime"]["candidates_generated"] == 4  # the policy's n
    # Only two distinct candidates passed the gate: n=3 returns those two, never the insult.
    body = _post(server, n=3, best_of=4).json()
    assert len(body["choices"]) == 2 and "idiot" not in json.dumps(body["choices"])
    # best_of and aligntime.n set what is sampled; aligntime.n wins.
    assert _post(server, best_of=2).json()["aligntime"]["candidates_generated"] == 2
    sampled = _post(server, best_of=2, aligntime={"n": 5}).json()["aligntime"]
    assert sampled["candidates_generated"] == 5


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"n": 3, "best_of": 2}, "n", "at most the candidates sampled, 2"),
        ({"n": 5}, "n", "at most the candidates sampled, 4"),
        ({"n": 7, "best_of": 7}, "best_of", "best_of must be at most 6"),
        ({"aligntime": {"n": 9}}, "aligntime.n", "aligntime.n must be at most 6"),
    ],
)
def test_n_above_what_is_sampled_is_a_400_naming_the_field(
    live: tuple[LiveServer, Path], body: dict[str, Any], param: str, fragment: str
) -> None:
    res = _post(live[0], **body)
    assert res.status_code == 400
    error = res.json()["error"]
    assert error["param"] == param and fragment in error["message"]


def test_streamed_choices_carry_their_index_and_one_extension(
    live: tuple[LiveServer, Path],
) -> None:
    res = _post(live[0], n=2, stream=True)
    chunks = [json.loads(line[6:]) for line in res.text.splitlines()
              if line.startswith("data: {")]  # fmt: skip
    text: dict[int, str] = {0: "", 1: ""}
    for chunk in chunks:
        for choice in chunk["choices"]:
            text[choice["index"]] += choice["delta"].get("content", "")
    assert {text[0][:4], text[1][:4]} == {"Keep", "Rest"}
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [f["choices"][0]["index"] for f in finals] == [0, 1]
    assert ["aligntime" in f for f in finals] == [False, True]


# --- GET /v1/models/{id} ----------------------------------------------------------------------


def test_a_model_is_retrieved_by_id_and_an_unknown_one_is_404(
    live: tuple[LiveServer, Path],
) -> None:
    server, _ = live
    card = httpx.get(server.url + "/v1/models/quick").json()
    assert card["id"] == "quick" and card["object"] == "model"
    listed = httpx.get(server.url + "/v1/models").json()["data"]
    assert card == next(m for m in listed if m["id"] == "quick")
    missing = httpx.get(server.url + "/v1/models/gpt-4o")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {
            "message": "the model 'gpt-4o' does not exist",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }


# --- x-request-id ---------------------------------------------------------------------------


def test_every_response_carries_x_request_id_equal_to_its_audit_row(
    live: tuple[LiveServer, Path],
) -> None:
    server, db = live
    ok = _post(server)
    assert ok.headers["x-request-id"] == ok.json()["id"]
    assert _row(db, ok.json()["id"])["status"] == 200  # type: ignore[index]
    unknown = _post(server, model="nope")  # an error the service audits
    rid = unknown.headers["x-request-id"]
    assert unknown.status_code == 404 and _row(db, rid)["status"] == 404  # type: ignore[index]
    streamed = _post(server, stream=True)
    first = json.loads(streamed.text.split("data: ", 2)[1])
    assert streamed.headers["x-request-id"] == first["id"]
    assert _row(db, first["id"])["status"] == 200  # type: ignore[index]
    ids = {ok.headers["x-request-id"], rid, streamed.headers["x-request-id"]}
    # Answers that never reach the service carry one too (no row: nothing was asked).
    for res in (
        httpx.post(server.url + "/v1/chat/completions", content=b"{", timeout=30),
        httpx.get(server.url + "/v1/models"),
        httpx.get(server.url + "/healthz"),
        httpx.get(server.url + "/nowhere"),
    ):
        assert res.headers["x-request-id"].startswith("chatcmpl-")
        ids.add(res.headers["x-request-id"])
    assert len(ids) == 7


# --- keep-alive -----------------------------------------------------------------------------


def test_a_slow_stream_gets_keepalive_comments_until_the_answer(
    live: tuple[LiveServer, Path],
) -> None:
    server, _ = live
    payload = {"model": "slow", "messages": ASK, "stream": True}
    arrivals = _stream_lines(server, payload)
    comments = [t for t, line in arrivals if line == ": keep-alive"]
    data = [line for _, line in arrivals if line.startswith("data: ")]
    assert data[-1] == "data: [DONE]" and "Rest and drink water." in "".join(data)
    # 1.6 s of alignment at a 0.3 s interval: about five, spread over the wait.
    assert 3 <= len(comments) <= 6, arrivals
    assert all(b - a < 0.6 for a, b in itertools.pairwise(comments))
    first_content = next(t for t, line in arrivals if "Rest and" in line)
    assert comments[-1] < first_content  # only while aligning, not after


def test_keepalive_interval_is_checked() -> None:
    with pytest.raises(ValueError, match="keepalive_s"):
        ServerOptions(keepalive_s=0)


# --- a client that leaves -------------------------------------------------------------------


def _send_and_leave(server: LiveServer, body: dict[str, Any], read: int) -> None:
    """Send a request on a raw socket, read ``read`` bytes of the answer, then close."""
    raw = json.dumps(body).encode()
    with socket.create_connection((server.host, server.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            + f"\r\nContent-Length: {len(raw)}\r\n\r\n".encode()
            + raw
        )
        got = b""
        while len(got) < read:
            got += sock.recv(4096)
        time.sleep(0.1)


def _rows_since(db: Path, since: float) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM requests WHERE created >= ?", (int(since),))
        return [dict(r) for r in rows]


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_is_audited_as_499_and_its_work_cancelled(
    live: tuple[LiveServer, Path], stream: bool
) -> None:
    server, db = live
    since = time.time() - 1
    before = {r["id"] for r in _rows_since(db, since)}
    body = {"model": "slow", "messages": ASK, "stream": stream, "user": f"leaver-{stream}"}
    left = time.monotonic()
    # A stream is left once its headers arrived; a plain request at once.
    _send_and_leave(server, body, read=1 if stream else 0)
    deadline = time.monotonic() + 5
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not rows:
        rows = [r for r in _rows_since(db, since)
                if r["id"] not in before and r["user"] == f"leaver-{stream}"]  # fmt: skip
        time.sleep(0.05)
    assert len(rows) == 1 and rows[0]["status"] == 499, rows
    assert rows[0]["error"].startswith("client_closed_request")
    # Recorded, and the request gone from the server, before the backend's 1.6 s were up.
    assert time.monotonic() - left < 1.5
    metrics = httpx.get(server.url + "/metrics").text
    assert "aligntime_requests_in_flight 0.0" in metrics


def test_an_early_stream_gets_keepalive_comments_while_the_survivor_is_chosen(
    live: tuple[LiveServer, Path],
) -> None:
    server, _ = live
    payload = {
        "model": "slow",
        "messages": ASK,
        "stream": True,
        "aligntime": {"stream_mode": "early"},
    }
    arrivals = _stream_lines(server, payload)
    data = [line for _, line in arrivals if line.startswith("data: ")]
    assert data[-1] == "data: [DONE]" and "Rest" in "".join(data), arrivals
    first_content = next(t for t, line in arrivals if "Rest" in line)
    comments = [t for t, line in arrivals if line == ": keep-alive" and t < first_content]
    # The fake backend takes 1.6 s for its first draft: the stream is not silent meanwhile.
    assert len(comments) >= 2, arrivals
