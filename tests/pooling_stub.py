"""A stub of vLLM's pooling endpoints and of text-embeddings-inference, on loopback.

A real HTTP server (``http.server`` in a thread, 127.0.0.1, a random port) that
answers with the request and reply shapes each project documents (see
``aligntime.scorers.http.endpoints``), computing its values from the texts so a test
can check that each value reached the right candidate:

- a text's *reward* is its number of words;
- its class probabilities are ``[1 - p, p]`` with ``p`` = share of words that are "bad";
- its embedding counts the letters a..e (so equal texts have cosine 1);
- a pair's score is the share of the second text's words found in the first.

``script`` holds faults consumed one per request: ``"503"``, ``"400"`` (that status with
an error body), ``"malformed"`` (a 200 that is not JSON), ``"short"`` (one result too
few), or ``"ok"``. Every request is recorded as (path, JSON body).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def reward(text: str) -> float:
    return float(len(text.split()))


def bad_share(text: str) -> float:
    words = text.lower().split()
    return sum(w.strip(".,!") == "bad" for w in words) / max(len(words), 1)


def embedding(text: str) -> list[float]:
    return [float(text.lower().count(ch)) for ch in "abcde"]


def overlap(query: str, text: str) -> float:
    q = set(query.lower().split())
    words = text.lower().split()
    return sum(w in q for w in words) / max(len(words), 1)


def _text(item: Any) -> str:
    return item[-1] if isinstance(item, list) else str(item)


class PoolingStub:
    """See the module docstring."""

    def __init__(self) -> None:
        self.script: deque[str] = deque()
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", "0")))
                body = json.loads(raw) if raw else {}
                with stub.lock:
                    stub.requests.append((self.path, body))
                    action = stub.script.popleft() if stub.script else "ok"
                status, payload = stub.answer(self.path, body, action)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:  # quiet test output
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> PoolingStub:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer(self, path: str, body: dict[str, Any], action: str) -> tuple[int, bytes]:
        if action.isdigit():
            return int(action), json.dumps({"error": f"scripted {action}"}).encode()
        if action == "malformed":
            return 200, b"<html>not json</html>"
        routes = {
            "/pooling": self.pooling,
            "/classify": self.classify,
            "/score": self.score,
            "/rerank": self.rerank,
            "/predict": self.predict,
            "/embed": self.embed,
        }
        if path not in routes:
            return 404, json.dumps({"error": f"no route {path}"}).encode()
        reply = routes[path](body)
        if action == "short":
            key = "results" if "results" in reply else "data"
            reply = reply[:-1] if isinstance(reply, list) else {**reply, key: reply[key][:-1]}
        return 200, json.dumps(reply).encode()

    # vLLM ------------------------------------------------------------------------------

    def pooling(self, body: dict[str, Any]) -> dict[str, Any]:
        texts = body["input"]
        # A reward model's pooled output has one value; an embedding model's, a vector.
        data = [
            {
                "index": i,
                "object": "pooling",
                "data": [reward(t)] if "Assistant:" in t else embedding(t),
            }
            for i, t in enumerate(texts)
        ]
        return {"id": "pool-1", "object": "list", "model": body["model"], "data": data}

    def classify(self, body: dict[str, Any]) -> dict[str, Any]:
        data = []
        for i, t in enumerate(body["input"]):
            p = bad_share(t)
            data.append(
                {
                    "index": i,
                    "label": "bad" if p > 0.5 else "ok",
                    "probs": [1 - p, p],
                    "num_classes": 2,
                }
            )
        return {"id": "classify-1", "object": "list", "model": body["model"], "data": data}

    def score(self, body: dict[str, Any]) -> dict[str, Any]:
        query, texts = body["text_1"], body["text_2"]
        data = [
            {"index": i, "object": "score", "score": overlap(query, t)} for i, t in enumerate(texts)
        ]
        return {"id": "score-1", "object": "list", "model": body["model"], "data": data}

    def rerank(self, body: dict[str, Any]) -> Any:
        if "documents" in body:  # vLLM (Jina/Cohere shape)
            results = [
                {"index": i, "document": {"text": t}, "relevance_score": overlap(body["query"], t)}
                for i, t in enumerate(body["documents"])
            ]
            results.sort(key=lambda r: -r["relevance_score"])
            return {"id": "rerank-1", "model": body["model"], "results": results}
        ranks = [
            {"index": i, "score": overlap(body["query"], t)} for i, t in enumerate(body["texts"])
        ]
        return sorted(ranks, key=lambda r: -r["score"])  # TEI: a bare array, best first

    # text-embeddings-inference ---------------------------------------------------------

    def predict(self, body: dict[str, Any]) -> Any:
        out = []
        for item in body["inputs"]:
            if len(item) == 2:  # a (request, answer) pair: a reward model's one raw logit
                out.append([{"label": "LABEL_0", "score": reward(item[1])}])
            else:
                p = bad_share(_text(item))
                labels = [{"label": "toxic", "score": p}, {"label": "neutral", "score": 1 - p}]
                out.append(sorted(labels, key=lambda x: -x["score"]))
        return out

    def embed(self, body: dict[str, Any]) -> Any:
        return [embedding(t) for t in body["inputs"]]
