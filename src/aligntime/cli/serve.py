"""``aligntime serve``: the OpenAI-compatible alignment server."""

from __future__ import annotations

import logging
import socket
import sys
from pathlib import Path

import typer

from aligntime.cli.console import policy_models, pull_with_progress, status

log = logging.getLogger(__name__)


def serve(
    policy: list[str] = typer.Option(
        ["default"],
        "--policy",
        "-p",
        envvar="ALIGNTIME_POLICY",
        help="Preset name or YAML file; repeat to serve several (the variable: space-separated).",
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", envvar="ALIGNTIME_HOST", help="Address to listen on."
    ),
    port: int = typer.Option(
        8000, "--port", envvar="ALIGNTIME_PORT", help="Port to listen on (0: any free port)."
    ),
    api_key: list[str] = typer.Option(
        [],
        "--api-key",
        help="Accepted bearer key, KEY (no rights) or NAME:KEY:RIGHTS (rights: candidates, "
        "audit; several joined with +); repeatable. Also ALIGNTIME_API_KEYS (a,b).",
    ),
    keys_file: Path | None = typer.Option(
        None,
        "--keys-file",
        envvar="ALIGNTIME_KEYS_FILE",
        help="YAML or JSON file of keys: {keys: [{name, secret or sha256, rights}]}.",
    ),
    anonymous_rights: str = typer.Option(
        "",
        "--anonymous-rights",
        envvar="ALIGNTIME_ANONYMOUS_RIGHTS",
        help="Rights of every request while no key is configured (only candidates; "
        "audit always needs a key). Default: none.",
    ),
    keepalive: float = typer.Option(
        5.0,
        "--keepalive",
        envvar="ALIGNTIME_KEEPALIVE",
        help="Seconds between ': keep-alive' comment lines while a stream is being aligned.",
    ),
    audit_db: Path | None = typer.Option(
        None,
        "--audit-db",
        envvar="ALIGNTIME_AUDIT_DB",
        help="SQLite file for the audit log (prompts, answers, scores).",
    ),
    max_body_bytes: int = typer.Option(
        1_048_576, "--max-body-bytes", envvar="ALIGNTIME_MAX_BODY_BYTES", help="Largest body."
    ),
    max_n: int = typer.Option(
        16, "--max-n", envvar="ALIGNTIME_MAX_N", help="Most candidates a request may ask for."
    ),
    max_tokens: int = typer.Option(
        4096, "--max-tokens", envvar="ALIGNTIME_MAX_TOKENS", help="Most tokens per candidate."
    ),
    rate_limit: int = typer.Option(
        0,
        "--rate-limit",
        envvar="ALIGNTIME_RATE_LIMIT",
        help="Requests per minute per API key (or client address); 0: off.",
    ),
    timeout: float = typer.Option(
        120.0, "--timeout", envvar="ALIGNTIME_TIMEOUT", help="Seconds before a request gets 504."
    ),
    batch_wait_ms: float = typer.Option(
        2.0,
        "--batch-wait-ms",
        envvar="ALIGNTIME_BATCH_WAIT_MS",
        help="Longest wait to batch scorer calls across requests (<=5).",
    ),
    access_log: bool = typer.Option(
        False, "--access-log", envvar="ALIGNTIME_ACCESS_LOG", help="Log each request's path."
    ),
    forwarded_allow_ips: str = typer.Option(
        "",
        "--forwarded-allow-ips",
        envvar="ALIGNTIME_FORWARDED_ALLOW_IPS",
        help="Proxies (comma-separated addresses or networks, or *) whose X-Forwarded-For "
        "names the client; default: none, the header is ignored.",
    ),
    shutdown_timeout: float = typer.Option(
        25.0,
        "--shutdown-timeout",
        envvar="ALIGNTIME_SHUTDOWN_TIMEOUT",
        help="After SIGTERM, seconds requests in flight may finish before they get a 503.",
    ),
    audit_key: list[str] = typer.Option(
        [],
        "--audit-key",
        help="Deprecated: a key with the audit right; use --api-key NAME:KEY:audit. "
        "Also ALIGNTIME_AUDIT_KEYS (a,b).",
    ),
    ui: bool = typer.Option(
        True,
        "--ui/--no-ui",
        envvar="ALIGNTIME_UI",
        help="Serve the playground at / (the API is the same either way).",
    ),
    reports: Path | None = typer.Option(
        None,
        "--reports",
        envvar="ALIGNTIME_REPORTS",
        help="A folder of `aligntime eval` outputs (or one) that the playground lists.",
    ),
) -> None:
    """Serve aligned chat completions over the OpenAI API (POST /v1/chat/completions)."""
    from aligntime.errors import ConfigError
    from aligntime.policy.loader import load_policy

    try:
        from aligntime.server.app import app_from_policies
        from aligntime.server.config import (
            AUDIT_KEYS_ENV,
            ServerOptions,
            keys_from_env,
            load_keys_file,
            parse_anonymous_rights,
            parse_api_key,
            parse_forwarded_allow_ips,
        )
        from aligntime.server.runner import Server, uvicorn_config
    except ImportError as exc:
        from aligntime.extras import missing

        raise missing("aligntime serve", exc, extra="server") from exc

    given = [parse_api_key(k) for k in sorted(keys_from_env(api_key))]
    keys = frozenset(k for k in given if isinstance(k, str))
    named = [k for k in given if not isinstance(k, str)]
    if keys_file is not None:
        named += load_keys_file(keys_file)
    audit_keys = keys_from_env(audit_key, AUDIT_KEYS_ENV)
    if audit_keys:
        log.warning("--audit-key and ALIGNTIME_AUDIT_KEYS are deprecated: use --api-key "
                    "NAME:KEY:audit or a --keys-file entry with rights: [audit]")  # fmt: skip
    if reports is not None and not reports.is_dir():
        raise ConfigError(
            f"--reports: {reports} is not a folder",
            hint="give the folder `aligntime eval --out` wrote, or one holding several",
        )
    if not (keys or audit_keys or named) and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without API keys: anyone who can reach it can use it", host)
    try:
        options = ServerOptions(
            api_keys=keys,
            max_body_bytes=max_body_bytes,
            max_n=max_n,
            max_tokens=max_tokens,
            rate_limit=rate_limit,
            timeout_s=timeout,
            audit_db=audit_db,
            batch_wait_ms=batch_wait_ms,
            forwarded_allow_ips=parse_forwarded_allow_ips(forwarded_allow_ips),
            shutdown_timeout_s=shutdown_timeout,
            audit_keys=audit_keys,
            keys=tuple(named),
            anonymous_rights=parse_anonymous_rights(anonymous_rights),
            keepalive_s=keepalive,
            ui=ui,
            reports_dir=reports,
        )
    except ValueError as exc:
        raise ConfigError(f"invalid server option: {exc}") from exc
    policies = [load_policy(p) for p in policy]
    for pol in policies:
        pull_with_progress(policy_models(pol), quiet=False)
    app = app_from_policies(policies, options)
    with status("loading models ...", quiet=False):
        app.state.service.load()
    sock = _listen(host, port)
    bound = sock.getsockname()[1]
    names = ", ".join(p.name for p in policies)
    # One parseable line on stderr: tests and scripts wait for it.
    sys.stderr.write(f"aligntime serving {names} on http://{host}:{bound}\n")
    sys.stderr.flush()
    try:
        Server(uvicorn_config(app, access_log=access_log)).run(sockets=[sock])
    finally:
        app.state.service.close()


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket (so --port 0 can report the port it got)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose
    # proto says TCP, and without it Nagle's algorithm holds the response body back
    # until the client's delayed ACK (about 40 ms per request).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        from aligntime.errors import ConfigError

        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror}",
            hint="choose another --port (0 picks a free one) or stop what uses it",
        ) from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock
