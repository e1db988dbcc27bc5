"""uvicorn, configured one way for ``aligntime serve`` and for the tests' live server.

Two things differ from uvicorn's defaults, both for safety:

- ``X-Forwarded-For`` is trusted only from the proxies the operator names
  (``--forwarded-allow-ips``). uvicorn trusts it from loopback by default, so
  any local client could pick the address its rate limit is counted under.
- SIGTERM drains: uvicorn stops accepting connections and the service gives
  requests in flight ``--shutdown-timeout`` seconds, then answers the rest with
  a 503 (see :class:`aligntime.server.service.Shutdown`). uvicorn's own grace
  period is longer by :data:`REPLY_GRACE_S`, the time to send those 503s and
  audit them; only then does it cancel what is left.
"""

from __future__ import annotations

import asyncio
import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI

from aligntime.server.config import ServerOptions
from aligntime.server.service import AlignmentService

REPLY_GRACE_S = 5.0
"""Seconds after the shutdown timeout for the aborted requests' replies and audit rows."""


def uvicorn_config(app: FastAPI, *, access_log: bool = False) -> uvicorn.Config:
    """The uvicorn settings for ``app``, from its service's options (defaults without one)."""
    service = _service(app)
    options = service.options if service is not None else ServerOptions()
    trusted = list(options.forwarded_allow_ips)
    return uvicorn.Config(
        app,
        log_level="warning",
        access_log=access_log,
        timeout_keep_alive=5,
        proxy_headers=bool(trusted),
        # Never None: uvicorn would then read FORWARDED_ALLOW_IPS and trust loopback.
        forwarded_allow_ips=trusted or [],
        timeout_graceful_shutdown=int(options.shutdown_timeout_s + REPLY_GRACE_S + 1),
    )


class Server(uvicorn.Server):
    """uvicorn's server; a shutdown signal also starts the service's drain."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """SIGTERM or SIGINT (or :meth:`terminate`): stop accepting and drain."""
        super().handle_exit(sig, frame)
        service = _service(self.config.app)
        if service is not None and self._loop is not None and not self._loop.is_closed():
            # A signal handler (or another thread) must not touch the loop directly.
            self._loop.call_soon_threadsafe(service.shutdown.begin)


def _service(app: object) -> AlignmentService | None:
    service = getattr(getattr(app, "state", None), "service", None)
    return service if isinstance(service, AlignmentService) else None
