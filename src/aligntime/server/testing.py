"""Run the real server on loopback, for tests, benchmarks and examples.

>>> with LiveServer(app) as server:          # doctest: +SKIP
...     openai.OpenAI(base_url=server.url + "/v1", api_key="k")

:func:`serve_subprocess` starts ``aligntime serve`` as a process of its own,
for what a thread cannot show (SIGKILL, a load generator in another process).
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time

from fastapi import FastAPI

from aligntime.server.runner import Server, uvicorn_config


class LiveServer:
    """uvicorn serving ``app`` on 127.0.0.1 and a free port, in a thread of its own."""

    def __init__(self, app: FastAPI, *, host: str = "127.0.0.1") -> None:
        self.app = app
        self.host = host
        # IPPROTO_TCP so that asyncio sets TCP_NODELAY on accepted connections.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self.port: int = self._sock.getsockname()[1]
        # The same settings as ``aligntime serve`` (trusted proxies, drain on shutdown).
        self._server = Server(uvicorn_config(app))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self

    def terminate(self) -> None:
        """What SIGTERM does to ``aligntime serve``: stop accepting, drain, then 503."""
        self._server.handle_exit(signal.SIGTERM, None)

    def __exit__(self, *exc_info: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
        self._sock.close()


def serve_subprocess(args: list[str], timeout: float = 60.0) -> tuple[subprocess.Popen[str], str]:
    """Start ``aligntime serve --port 0 ARGS``; return the process and its base URL.

    Waits for the server's "serving ... on URL" line; raises RuntimeError with
    the server's output if it exits or does not announce itself in ``timeout``.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "aligntime", "serve", "--port", "0", *args],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        found = re.search(r"aligntime serving .* on (http://\S+)", line)
        if found:
            # Keep draining stderr so the server never blocks on a full pipe.
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, found.group(1)
    proc.kill()
    raise RuntimeError(f"the server did not start: {proc.stderr.read()}")
