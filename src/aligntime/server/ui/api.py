"""API routes the playground reads besides the OpenAI ones: policies, the audit log, reports.

They live under ``/v1/``, so the request guard applies to them exactly as to chat
completions: the same API keys, the same rate limit, the same body limit. Reading
the audit log also needs the ``audit`` right (``--api-key NAME:KEY:audit`` or a
``--keys-file`` entry); with no such key configured it cannot be read over HTTP
at all (it holds every user's prompts). Everything is served as JSON for the page
to render: no HTML is built from data on the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from aligntime import registry
from aligntime.aligner import build
from aligntime.policy.schema import Policy
from aligntime.scorers.base import Scorer
from aligntime.server.errors import ApiError
from aligntime.server.security import forbidden
from aligntime.server.service import AlignmentService, RequestContext
from aligntime.server.text import json_bytes
from aligntime.server.ui import audit_view, reports
from aligntime.server.ui.audit_view import Flag

# Not in the OpenAPI schema: the playground's own reads, documented in the README (the schema
# stays the OpenAI surface that clients and the fuzz test generate requests from).
router = APIRouter(prefix="/v1/aligntime", include_in_schema=False)

_LIST_MAX = 500
"""Most audit rows one listing returns."""


def _service(request: Request) -> AlignmentService:
    service: AlignmentService = request.app.state.service
    return service


def _json(body: Any) -> Response:
    return Response(json_bytes(body), media_type="application/json")


# --- policies -----------------------------------------------------------------------------

_USABLE: dict[str, bool] = {}
"""Strategy name -> whether it builds with default options (what a request may name)."""


def _usable_strategies() -> list[str]:
    for name in registry.available("strategy"):
        if name not in _USABLE:
            try:
                build("strategy", name, {})
                _USABLE[name] = True
            except Exception:  # one that needs options cannot be chosen per request
                _USABLE[name] = False
    return [name for name, ok in _USABLE.items() if ok]


def _describe(policy: Policy, loaded: Sequence[Scorer], max_n: int) -> dict[str, Any]:
    scorers = {s.name: s for s in loaded}
    return {
        "name": policy.name,
        "description": policy.description,
        "n": policy.n,
        "max_n": min(policy.max_n, max_n),
        "strategy": policy.strategy.kind,
        "templates": sorted(policy.prompt.templates),
        "default_template": policy.prompt.default_template,
        "input_gate": policy.input is not None,
        "scorers": [
            {
                "name": s.name,
                "kind": s.kind,
                "weight": s.weight,
                "gate": s.gate.model_dump() if s.gate is not None else None,
                "direction": scorers[s.name].direction if s.name in scorers else "higher",
                "range": list(scorers[s.name].value_range) if s.name in scorers else [0.0, 1.0],
            }
            for s in policy.scorers
        ],
    }


@router.get("/policies")
async def policies(request: Request) -> Response:
    """The served policies with what a request may vary: N, strategy, template; and each
    scorer's gate, weight, direction and range (to draw its bar)."""
    service = _service(request)
    strategies = await asyncio.to_thread(_usable_strategies)
    data = [
        _describe(s.policy, s.aligner.scorers, service.options.max_n)
        for _, s in sorted(service.served.items())
    ]
    return _json({"data": data, "strategies": strategies})


# --- the audit log ------------------------------------------------------------------------


def _audit_db(request: Request) -> Path:
    """The audit database, once the caller's key is known to hold the audit right."""
    service = _service(request)
    ctx = request.scope.get("aligntime.ctx")
    # Only a key holds the audit right (never an anonymous caller: see ServerOptions).
    if not (isinstance(ctx, RequestContext) and ctx.key_id and "audit" in ctx.rights):
        raise forbidden("audit", "this API key may not read the audit log")
    if service.options.audit_db is None:
        raise ApiError(
            404, "the audit log is off on this server (serve --audit-db FILE)", code="not_found"
        )
    return service.options.audit_db


def _read_failed(exc: audit_view.AuditReadError) -> ApiError:
    return ApiError(
        503,
        f"the audit log cannot be read now: {exc}",
        type="server_error",
        code="audit_unavailable",
    )


@router.get("/audit")
async def audit_list(
    request: Request,
    last: Annotated[int, Query(ge=1, le=_LIST_MAX, description="Most requests to return.")] = 50,
    flag: Annotated[
        list[Flag] | None, Query(description="Only requests with every flag given.")
    ] = None,
    policy: Annotated[str | None, Query(description="Only requests to this policy.")] = None,
    before: Annotated[
        float | None, Query(description="Only requests older than this time.")
    ] = None,
) -> Response:
    """Recent requests, newest first (audit right only)."""
    path = _audit_db(request)
    try:
        rows = await asyncio.to_thread(
            audit_view.list_requests,
            path,
            limit=last,
            flags=tuple(dict.fromkeys(flag or [])),
            policy=policy or None,
            before=before,
        )
    except audit_view.AuditReadError as exc:
        raise _read_failed(exc) from exc
    return _json({"data": rows, "flags": list(audit_view.FLAGS)})


@router.get("/audit/{rid}")
async def audit_one(request: Request, rid: str) -> Response:
    """One request with every candidate and score (audit right only)."""
    path = _audit_db(request)
    try:
        item = await asyncio.to_thread(audit_view.read_request, path, rid)
    except audit_view.AuditReadError as exc:
        raise _read_failed(exc) from exc
    if item is None:
        raise ApiError(404, f"no audited request has the id {rid!r}", code="not_found")
    return _json(item)


# --- evaluation reports ------------------------------------------------------------------


def _reports_root(request: Request) -> Path:
    root = _service(request).options.reports_dir
    if root is None:
        raise ApiError(404, "no reports on this server (serve --reports DIR)", code="not_found")
    return root


async def _report_folder(request: Request, name: str) -> Path:
    found = await asyncio.to_thread(reports.find_reports, _reports_root(request))
    folder = found.get(name)
    if folder is None:
        raise ApiError(404, f"no report named {name!r}", param="name", code="not_found")
    return folder


@router.get("/reports")
async def report_list(request: Request) -> Response:
    """The ``aligntime eval`` output folders under ``--reports``."""
    root = _reports_root(request)

    def listing() -> list[dict[str, Any]]:
        return [reports.describe(n, f) for n, f in reports.find_reports(root).items()]

    return _json({"data": await asyncio.to_thread(listing)})


@router.get("/report")
async def report_open(request: Request, name: Annotated[str, Query(min_length=1)]) -> Response:
    """One report: its summary, plot names and first prompts with their candidates."""
    folder = await _report_folder(request, name)
    body = await asyncio.to_thread(reports.open_report, folder)
    return _json({"name": name, **body})


@router.get("/report/plot")
async def report_plot(
    request: Request,
    name: Annotated[str, Query(min_length=1)],
    plot: Annotated[str, Query(min_length=1)],
) -> Response:
    """One of a report's PNG plots."""
    folder = await _report_folder(request, name)
    path = reports.plot_path(folder, plot)
    if path is None:
        raise ApiError(404, f"report {name!r} has no plot {plot!r}", param="plot",
                       code="not_found")  # fmt: skip
    return Response(await asyncio.to_thread(path.read_bytes), media_type="image/png")


@router.get("/report/html")
async def report_html(request: Request, name: Annotated[str, Query(min_length=1)]) -> Response:
    """The report's own ``report.html``, as a download (it is opened from disk, not here)."""
    folder = await _report_folder(request, name)
    path = folder / reports.REPORT
    if not path.is_file():
        raise ApiError(404, f"report {name!r} has no {reports.REPORT}", code="not_found")
    return Response(
        await asyncio.to_thread(path.read_bytes),
        media_type="text/html; charset=utf-8",
        headers={
            "Content-Disposition": 'attachment; filename="report.html"',
            # Should a browser render it anyway: no script, no request, no framing.
            "Content-Security-Policy": "sandbox; default-src 'none'; img-src data:; "
            "style-src 'unsafe-inline'",
        },
    )
