"""The playground's pages: one HTML shell and its static assets, shipped in the package.

The shell and assets hold no data; everything the page shows comes from the API
with the key the user enters (kept in the tab's ``sessionStorage``). Every page
response carries a strict Content-Security-Policy: scripts and styles only from
this server's own files (no inline script, no ``eval``), requests only to this
server, no frames, no forms posting elsewhere. Model text reaches the page as
JSON and is inserted as text nodes, never as markup.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import Response

router = APIRouter(include_in_schema=False)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; font-src 'none'; object-src 'none'; frame-src 'none'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
"""What the pages may load and do: their own files and this server's API, nothing else."""

HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
"""The files under ``/ui/`` and their types; nothing else in the folder is served."""

PAGES = ("/", "/audit", "/reports")
"""Paths that answer with the shell; the script shows the view the path names."""


@cache
def asset(name: str) -> tuple[bytes, str]:
    """An asset's bytes and its ETag, read once from the package."""
    data = resources.files("aligntime.server.ui").joinpath("static", name).read_bytes()
    return data, '"' + hashlib.sha256(data).hexdigest()[:16] + '"'


def _send(request: Request, name: str, media_type: str, cache: str) -> Response:
    data, etag = asset(name)
    headers = {**HEADERS, "ETag": etag, "Cache-Control": cache}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=media_type, headers=headers)


async def shell(request: Request) -> Response:
    """The page; which view it shows is the path's business (its script reads it)."""
    # no-cache: revalidated each time (an ETag match costs no body), so an upgrade shows.
    return _send(request, "index.html", "text/html; charset=utf-8", "no-cache")


for _path in PAGES:
    router.add_api_route(_path, shell, methods=["GET"], response_class=Response)


@router.get("/ui/{name}")
async def static_asset(request: Request, name: str) -> Response:
    """One of the shipped assets (a fixed list: no path is built from the request)."""
    media_type = ASSETS.get(name)
    if media_type is None:
        return Response(b"not found", 404, media_type="text/plain", headers=HEADERS)
    return _send(request, name, media_type, "no-cache")
