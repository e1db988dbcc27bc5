"""Settings of one server process: keys, limits, time-outs, audit, batching."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from aligntime.errors import ConfigError

KEYS_ENV = "ALIGNTIME_API_KEYS"
AUDIT_KEYS_ENV = "ALIGNTIME_AUDIT_KEYS"


class ServerOptions(BaseModel):
    """What ``aligntime serve`` was told, besides the policies."""

    model_config = ConfigDict(extra="forbid")

    api_keys: frozenset[str] = frozenset()
    """Accepted bearer keys; empty: no authentication (bind to loopback only)."""
    max_body_bytes: int = Field(1_048_576, ge=256)
    """Largest request body; larger ones get 413."""
    max_n: int = Field(16, ge=1)
    """Most candidates one request may ask for (the policy's ``max_n`` also applies)."""
    max_tokens: int = Field(4096, ge=1)
    """Most tokens per candidate one request may ask for."""
    rate_limit: int = Field(0, ge=0)
    """Requests per minute per API key (per client address without keys); 0: no limit."""
    timeout_s: float = Field(120.0, gt=0)
    """Seconds a request may take before it is answered with 504 (the audit commit included)."""
    audit_db: Path | None = None
    """SQLite file of the audit log; ``None``: no audit log (prompts are never stored)."""
    batch_wait_ms: float = Field(2.0, ge=0.0, le=5.0)
    """Longest wait to coalesce concurrent scorer calls into one batch."""
    worker_threads: int = Field(64, ge=4)
    """Worker threads for blocking engine and scorer calls (the event loop's executor)."""
    forwarded_allow_ips: tuple[str, ...] = ()
    """Proxies (addresses, networks, ``*``) whose ``X-Forwarded-For`` names the client;
    empty: the header is ignored, so a client cannot pick its own rate-limit bucket."""
    shutdown_timeout_s: float = Field(25.0, ge=0.0)
    """After SIGTERM, seconds requests in flight may still finish before they get a 503."""
    audit_keys: frozenset[str] = frozenset()
    """Keys that may also read the audit log (``GET /v1/aligntime/audit``); each is an
    accepted API key too. Without one, the audit log cannot be read over HTTP."""
    ui: bool = True
    """Serve the playground pages (``/``, ``/audit``, ``/reports``); the API is the same."""
    reports_dir: Path | None = None
    """A folder of ``aligntime eval`` outputs (or one) the playground lists; ``None``: none."""

    @model_validator(mode="after")
    def _audit_keys_are_api_keys(self) -> ServerOptions:
        # A key with the audit right must pass the API's own authentication first.
        if not self.audit_keys <= self.api_keys:
            self.api_keys = self.api_keys | self.audit_keys
        return self


def keys_from_env(cli_keys: list[str] | None = None, env: str = KEYS_ENV) -> frozenset[str]:
    """Keys given on the command line plus the comma-separated variable ``env``
    (``ALIGNTIME_API_KEYS``; ``ALIGNTIME_AUDIT_KEYS`` for the audit right)."""
    keys = {k.strip() for k in (cli_keys or []) if k.strip()}
    keys |= {k.strip() for k in os.environ.get(env, "").split(",") if k.strip()}
    return frozenset(keys)


def parse_forwarded_allow_ips(value: str | None) -> tuple[str, ...]:
    """``--forwarded-allow-ips``: comma-separated addresses or networks, or ``*``."""
    entries = tuple(v.strip() for v in (value or "").split(",") if v.strip())
    for entry in entries:
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(
                f"--forwarded-allow-ips: {entry!r} is not an IP address or network",
                hint="give the proxies' addresses, e.g. 127.0.0.1,10.0.0.0/8 (or * for any)",
            ) from None
    return entries
