"""A small, controllable OpenAI-compatible HTTP server on loopback, for tests.

It is a real HTTP/1.1 server (asyncio streams on 127.0.0.1, a random port, its
own event loop in a thread) so the ``openai`` backend is tested through real
sockets, keep-alive connections and real faults, not a mocked transport.

A test tells it how to behave with attributes (``honour_n``, ``reject_n``,
``api_key``, ``forward``, ``logprobs_for``, and ``completion_for`` /
``token_count_for`` for ``/v1/completions`` and vLLM's ``/tokenize``, and
``continuation`` with ``full_answer`` for a conversation that ends with a partial
answer) and with ``script``: a queue of faults consumed one per request, in
arrival order:

- ``"500"``, ``"503"``, ``"400"``, ...: that status with an OpenAI-shaped error body
- ``"429"``: rate limited, with ``Retry-After: <retry_after>``
- ``"hang"``: wait ``hang_s`` before answering (past the client's timeout)
- ``"malformed"``: a 200 whose body is not JSON
- ``"malformed500"``: a 500 whose body is an HTML page
- ``"nochoices"``: a 200 JSON object without ``choices``
- ``"drop"``: headers and half the body, then the connection is closed
- ``"ok"``: answer normally

Every request is recorded in ``requests`` (path, headers, JSON body, arrival time).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass
class Recorded:
    """One request the server received."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float


def default_text(body: dict[str, Any], index: int) -> str:
    """A deterministic answer that differs by seed and by choice index."""
    seed = body.get("seed", "none")
    question = str(body["messages"][-1]["content"])[:40]
    return f"Answer {index} with seed {seed} to: {question}"


@dataclass
class StubServer:
    """See the module docstring."""

    honour_n: bool = True
    """Return n choices when asked for n; False returns one choice (like many servers)."""
    reject_n: bool = False
    """Answer any request with n > 1 with a 400 that names the parameter n."""
    api_key: str | None = None
    """When set, requests without ``Authorization: Bearer <api_key>`` get a 401."""
    retry_after: str = "0"
    """Retry-After header value sent with scripted 429s."""
    error_headers: dict[str, str] = field(default_factory=dict)
    """Headers added to every scripted error reply (e.g. ``retry-after-ms``, ``x-should-retry``)."""
    hang_s: float = 5.0
    """How long a scripted ``hang`` waits before answering."""
    delay_s: float = 0.0
    """Seconds every chat completion takes (to observe concurrency)."""
    send_usage: bool = True
    """Include a ``usage`` block in replies."""
    text: Callable[[dict[str, Any], int], str] = default_text
    """The answer text for choice ``index`` of a request body."""
    logprobs_for: Callable[[dict[str, Any]], dict[str, float]] = field(
        default=lambda body: {"Yes": -0.2, "No": -1.8, "Maybe": -4.0}
    )
    """The top log-probabilities for a ``max_tokens: 1, top_logprobs: k`` request."""
    completion_for: Callable[[dict[str, Any]], list[tuple[str, dict[str, float]]]] | None = None
    """Answers ``/v1/completions``: the steps (chosen token, top log-probabilities there)
    of the completion of a request body; None answers it with a 404, like a chat-only
    server. The steps are cut at the body's ``max_tokens``."""
    token_count_for: Callable[[dict[str, Any]], int] | None = None
    """Answers vLLM's ``/tokenize`` (at the server root) with this token count; None: 404."""
    continuation: str = "continue_final_message"
    """How a final assistant message is treated, as real servers do:
    ``continue_final_message`` (vLLM, SGLang): continued when the request says so, and
    ``add_generation_prompt`` left true with it is a 400; ``prefill`` (llama.cpp's server):
    always continued, the reply echoing the partial answer; ``strict`` (a hosted API): the
    fields it does not know are a 400. Not continued, it is an earlier turn."""
    full_answer: str = "The sea is calm today and the small waves are blue ."
    """What continued answers continue: a partial answer made of its first words gets the
    next ones (a word a token, at most ``max_tokens``); any other gets none."""
    fresh_from_full: bool = False
    """Answer fresh requests with ``full_answer`` too, cut at ``max_tokens`` words (then
    finish_reason ``length``), as a model that always gives that answer would."""
    forward: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    """When set, every chat completion is answered by this (blocking) function; a reply
    with an ``error`` key is sent as a 400."""
    script: deque[str] = field(default_factory=deque)
    requests: list[Recorded] = field(default_factory=list)
    max_in_flight: int = 0
    """Most chat completions that were being answered at the same time."""
    port: int = 0

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._lock = threading.Lock()
        self._in_flight = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def chat_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> StubServer:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        )
        self._server = future.result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    # --- HTTP -------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:  # keep-alive: several requests per connection
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                _method, path, _version = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                raw = await reader.readexactly(int(headers.get("content-length", "0")))
                body = json.loads(raw) if raw else {}
                with self._lock:
                    self.requests.append(Recorded(path, headers, body, time.monotonic()))
                    action = self.script.popleft() if self.script else "ok"
                if not await self._respond(writer, path, headers, body, action):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            # Shutdown cancels open connections; Python 3.11's stream callback would log a
            # cancelled handler as an error, so the cancellation ends the handler quietly.
            return
        finally:
            writer.close()

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        path: str,
        headers: dict[str, str],
        body: dict[str, Any],
        action: str,
    ) -> bool:
        """Answer one request; False when the connection must close."""
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            await self._send(writer, 401, _error("Incorrect API key provided.", "invalid_api_key"))
            return True
        if action == "hang":
            await asyncio.sleep(self.hang_s)
            action = "ok"
        if action.isdigit():
            status = int(action)
            extra = {"Retry-After": self.retry_after} if status == 429 else {}
            extra.update(self.error_headers)
            await self._send(writer, status, _error(f"scripted {status}", "scripted"), extra)
            return True
        if action == "malformed":
            await self._send(writer, 200, b'{"id": "x", "choices": [')
            return True
        if action == "malformed500":
            await self._send(writer, 500, b"<html><body>upstream exploded</body></html>")
            return True
        if action == "nochoices":
            await self._send(writer, 200, json.dumps({"id": "x", "object": "chat"}).encode())
            return True
        if path.endswith("/tokenize") and self.token_count_for is not None:
            count = self.token_count_for(body)
            reply = {"count": count, "tokens": list(range(count)), "max_model_len": 8192}
            await self._send(writer, 200, json.dumps(reply).encode())
            return True
        if path.endswith("/v1/completions") and self.completion_for is not None:
            steps = self.completion_for(body)
            await self._send(writer, 200, json.dumps(_completion(body, steps)).encode())
            return True
        if not path.endswith("/chat/completions"):
            await self._send(writer, 404, _error(f"no route {path}", "not_found"))
            return True
        if self.reject_n and int(body.get("n", 1)) > 1:
            await self._send(writer, 400, _error("n must be 1 for this model", "invalid_request"))
            return True
        refusal = self._refuse_continuation(body)
        if refusal is not None:
            await self._send(writer, 400, _error(refusal, "invalid_request"))
            return True
        self._in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            reply = await self._complete(body)
        finally:
            self._in_flight -= 1
        if "error" in reply:  # a forwarded engine refused the request
            await self._send(writer, 400, json.dumps(reply).encode())
            return True
        payload = json.dumps(reply).encode()
        if action == "drop":
            head = (
                f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n"
            )
            writer.write(head.encode() + payload[: len(payload) // 2])
            await writer.drain()
            return False
        await self._send(writer, 200, payload)
        return True

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        payload: bytes,
        extra: dict[str, str] | None = None,
    ) -> None:
        head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
        head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + payload)
        await writer.drain()

    def _refuse_continuation(self, body: dict[str, Any]) -> str | None:
        """The message of a 400 for the continuation fields, as the server in play words it."""
        fields = [f for f in ("continue_final_message", "add_generation_prompt") if f in body]
        if self.continuation == "strict" and fields:
            return f"Unrecognized request argument supplied: {fields[0]}"
        both = body.get("continue_final_message") and body.get("add_generation_prompt", True)
        if self.continuation == "continue_final_message" and both:
            return "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
        return None

    def _partial(self, body: dict[str, Any]) -> str | None:
        """The partial answer this request continues, if it continues one."""
        messages = body.get("messages") or []
        if not messages or messages[-1].get("role") != "assistant":
            return None
        if self.continuation == "prefill" or body.get("continue_final_message"):
            return str(messages[-1].get("content", ""))
        return None

    def _continued(self, body: dict[str, Any], partial: str) -> dict[str, Any]:
        done, words = partial.split(), self.full_answer.split()
        rest = words[len(done) :] if words[: len(done)] == done else []
        limit = int(body.get("max_tokens", 16))
        new = rest[:limit]
        text = " ".join(new)
        if text and partial and not partial[-1].isspace():
            text = " " + text
        following = text  # with max_tokens 1, the next token as a tokenizer spells it
        if self.continuation == "prefill":
            text = partial + text  # llama.cpp's reply holds the whole turn
        choice: dict[str, Any] = {
            "message": {"role": "assistant", "content": text},
            "finish_reason": "length" if len(rest) > limit else "stop",
        }
        if body.get("logprobs"):
            choice["logprobs"] = {"content": [{"token": w, "logprob": -0.5} for w in new]}
        if body.get("top_logprobs") and body.get("max_tokens") == 1:
            top = [{"token": following, "logprob": -0.1}, {"token": "and", "logprob": -2.5}]
            choice["logprobs"] = {
                "content": [{"token": following, "logprob": -0.1, "top_logprobs": top}]
            }
        n = int(body.get("n", 1)) if self.honour_n else 1
        choices = [{"index": i, **choice} for i in range(n)]
        return _reply(body, choices, n * len(new) if self.send_usage else None)

    async def _complete(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.forward is not None:
            return await asyncio.to_thread(self.forward, body)
        partial = self._partial(body)
        if partial is None and self.fresh_from_full and not body.get("top_logprobs"):
            partial = ""
        if partial is not None:
            return self._continued(body, partial)
        if body.get("top_logprobs") and body.get("max_tokens") == 1:
            top = self.logprobs_for(body)
            entries = [{"token": t, "logprob": lp} for t, lp in top.items()]
            first = max(top, key=lambda t: top[t])
            verdict: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": first},
                "finish_reason": "length",
                "logprobs": {
                    "content": [{"token": first, "logprob": top[first], "top_logprobs": entries}]
                },
            }
            return _reply(body, [verdict], 1 if self.send_usage else None)
        n = int(body.get("n", 1)) if self.honour_n else 1
        choices: list[dict[str, Any]] = []
        for i in range(n):
            text = self.text(body, i)
            choice: dict[str, Any] = {
                "index": i,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
            if body.get("logprobs"):
                words = text.split()
                choice["logprobs"] = {"content": [{"token": w, "logprob": -0.5} for w in words]}
            choices.append(choice)
        completion = sum(len(str(c["message"]["content"]).split()) for c in choices)
        return _reply(body, choices, completion if self.send_usage else None)


def _completion(body: dict[str, Any], steps: list[tuple[str, dict[str, float]]]) -> dict[str, Any]:
    """A /completions reply in OpenAI's legacy shape, with per-token top log-probabilities."""
    limit = int(body.get("max_tokens", 16))
    cut = steps[:limit]
    text = "".join(token for token, _ in cut)
    offsets = [sum(len(t) for t, _ in cut[:i]) for i in range(len(cut))]
    choice = {
        "index": 0,
        "text": text,
        "finish_reason": "length" if len(steps) > limit else "stop",
        "logprobs": {
            "tokens": [token for token, _ in cut],
            "token_logprobs": [top.get(token, -0.01) for token, top in cut],
            "top_logprobs": [top for _, top in cut],
            "text_offset": offsets,
        },
    }
    reply = _reply(body, [choice], len(cut))
    reply["object"] = "text_completion"
    return reply


def _reply(body: dict[str, Any], choices: list[Any], completion: int | None) -> dict[str, Any]:
    reply: dict[str, Any] = {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "stub"),
        "choices": choices,
    }
    if completion is not None:
        prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        reply["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
    return reply


def _error(message: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": code, "code": code}}).encode()
