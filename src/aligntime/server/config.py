"""Settings of one server process: keys and their rights, limits, time-outs, audit, batching."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aligntime.errors import ConfigError

KEYS_ENV = "ALIGNTIME_API_KEYS"
AUDIT_KEYS_ENV = "ALIGNTIME_AUDIT_KEYS"

Right = Literal["candidates", "audit"]
"""What a key may do besides asking for answers: ``candidates``, receive every candidate
(``aligntime.return_candidates``; the text of one that failed a gate stays withheld);
``audit``, read the audit log and see gate-failed candidates' text (implies ``candidates``)."""
RIGHTS: tuple[Right, ...] = ("candidates", "audit")

_SHA256 = re.compile(r"[0-9a-f]{64}")


def implied(rights: Iterable[Right]) -> frozenset[Right]:
    """``rights`` with what they imply: a key that may read every candidate in the audit
    log gains nothing by being refused them in an answer, so ``audit`` brings ``candidates``."""
    given = frozenset(rights)
    return given | {"candidates"} if "audit" in given else given


class ApiKey(BaseModel):
    """One accepted bearer key: a name for logs, the secret or its SHA-256, its rights."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    """A label for the operator (never sent to clients)."""
    secret: str | None = Field(None, min_length=1, repr=False)
    """The key itself; give this or ``sha256``."""
    sha256: str | None = None
    """The key's SHA-256 as 64 lowercase hex digits (``printf %s KEY | sha256sum``), so
    that the file holds no secret."""
    rights: frozenset[Right] = frozenset()
    """Rights besides answers; none by default."""

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256.fullmatch(value.lower()):
            raise ValueError("must be 64 hex digits (the SHA-256 of the key)")
        return value.lower() if value is not None else None

    @model_validator(mode="after")
    def _one_secret(self) -> ApiKey:
        if (self.secret is None) == (self.sha256 is None):
            raise ValueError("give exactly one of secret and sha256")
        return self

    def digest(self) -> str:
        """The key's SHA-256, hex."""
        if self.sha256 is not None:
            return self.sha256
        assert self.secret is not None
        return hashlib.sha256(self.secret.encode()).hexdigest()


class ServerOptions(BaseModel):
    """What ``aligntime serve`` was told, besides the policies."""

    model_config = ConfigDict(extra="forbid")

    api_keys: frozenset[str] = frozenset()
    """Accepted bearer keys without rights (``--api-key KEY``); with no key at all
    (here, in ``keys`` or ``audit_keys``): no authentication (bind to loopback only)."""
    keys: tuple[ApiKey, ...] = ()
    """Named keys with rights (``--api-key NAME:KEY:RIGHTS``, ``--keys-file``)."""
    anonymous_rights: frozenset[Right] = frozenset()
    """Rights of every request while no key is configured (``--anonymous-rights``);
    ``audit`` is never given without a key."""
    keepalive_s: float = Field(5.0, gt=0.0, le=60.0)
    """Seconds between SSE comment lines (``: keep-alive``) while a streamed request is
    being aligned, so that proxies with idle time-outs keep the connection."""
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
    """Deprecated (``--audit-key``): keys with the ``audit`` right, as
    ``keys`` with ``rights: [audit]`` gives it; each is an accepted API key too."""
    ui: bool = True
    """Serve the playground pages (``/``, ``/audit``, ``/reports``); the API is the same."""
    reports_dir: Path | None = None
    """A folder of ``aligntime eval`` outputs (or one) the playground lists; ``None``: none."""

    @model_validator(mode="after")
    def _audit_keys_are_api_keys(self) -> ServerOptions:
        # A key with the audit right must pass the API's own authentication first.
        if not self.audit_keys <= self.api_keys:
            self.api_keys = self.api_keys | self.audit_keys
        if "audit" in self.anonymous_rights:
            raise ValueError(
                "anonymous_rights: the audit right needs a key (the audit log holds every "
                "user's prompts); give it with --api-key NAME:KEY:audit"
            )
        return self

    def all_keys(self) -> list[ApiKey]:
        """Every accepted key with its rights (a key given twice holds both sets)."""
        given = [
            *(ApiKey(name=_label(k), secret=k) for k in sorted(self.api_keys)),
            *(ApiKey(name=_label(k), secret=k, rights={"audit"}) for k in sorted(self.audit_keys)),
            *self.keys,
        ]
        merged: dict[str, ApiKey] = {}
        for key in given:
            seen = merged.get(key.digest())
            if seen is not None:
                rights = seen.rights | key.rights
                name = seen.name if seen.name == key.name else f"{seen.name}|{key.name}"
                key = seen.model_copy(update={"rights": rights, "name": name})
            merged[key.digest()] = key
        return list(merged.values())

    @property
    def authenticated(self) -> bool:
        """Whether requests to ``/v1/`` need a key."""
        return bool(self.api_keys or self.keys)


def _label(secret: str) -> str:
    """The name of a key given without one: the short hash the audit rows carry."""
    return "key-" + hashlib.sha256(secret.encode()).hexdigest()[:12]


def parse_api_key(value: str) -> ApiKey | str:
    """``--api-key``: ``KEY`` (a key without rights, returned as is) or ``NAME:KEY:RIGHTS``
    (``RIGHTS`` separated by ``+`` or ``,``; may be empty)."""
    parts = value.split(":")
    if len(parts) != 3:
        return value
    name, secret, rights = (p.strip() for p in parts)
    where = f"--api-key {name or '?'}:***:{rights}"
    try:
        return ApiKey(name=name, secret=secret, rights=_rights(rights, where))
    except ValidationError as exc:
        problem = exc.errors()[0]
        field = ".".join(str(p) for p in problem["loc"]) or "key"
        raise ConfigError(
            f"{where}: {field}: {problem['msg']}",
            hint="give NAME:KEY:RIGHTS, e.g. alice:sk-123:candidates (rights: "
            + ", ".join(RIGHTS)
            + ")",
        ) from None


def parse_anonymous_rights(value: str) -> frozenset[Right]:
    """``--anonymous-rights``: rights separated by ``+`` or ``,`` (``audit`` is refused)."""
    rights = _rights(value, "--anonymous-rights")
    if "audit" in rights:
        raise ConfigError(
            "--anonymous-rights: the audit right needs a key (the audit log holds every "
            "user's prompts)",
            hint="give it to a key: --api-key NAME:KEY:audit",
        )
    return rights


def _rights(text: str, where: str) -> frozenset[Right]:
    found: set[Right] = set()
    for raw in re.split(r"[+,]", text):
        name = raw.strip()
        if not name:
            continue
        if name not in RIGHTS:
            raise ConfigError(
                f"{where}: unknown right {name!r}",
                hint="rights: " + ", ".join(RIGHTS) + " (separate several with +)",
            )
        found.add(name)
    return frozenset(found)


class _KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[ApiKey] = Field(min_length=1)


def load_keys_file(path: Path) -> tuple[ApiKey, ...]:
    """``--keys-file``: a YAML (or JSON) file ``keys: [{name, secret | sha256, rights}]``.

    Every problem is a :class:`ConfigError` naming the file, the entry and the field.
    """
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--keys-file: cannot read {path}: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--keys-file {path}: not valid YAML or JSON: {exc}") from None
    try:
        parsed = _KeysFile.model_validate(data)
    except ValidationError as exc:
        problem = exc.errors()[0]
        loc = [str(p) for p in problem["loc"]]
        if len(loc) >= 2 and loc[0] == "keys" and isinstance(data, dict):
            entries = data.get("keys")
            index = int(loc[1]) if loc[1].isdigit() else -1
            if isinstance(entries, list) and 0 <= index < len(entries):
                entry = entries[index]
                if isinstance(entry, dict) and entry.get("name"):
                    loc[1] = f"{loc[1]} ({entry['name']})"
        raise ConfigError(
            f"--keys-file {path}: {'.'.join(loc) or 'the file'}: {problem['msg']}",
            hint="each entry: {name: NAME, secret: KEY or sha256: HEX, rights: [candidates, "
            "audit]}",
        ) from None
    names = [k.name for k in parsed.keys]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"--keys-file {path}: the name {twice[0]!r} is given twice")
    return tuple(parsed.keys)


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
