"""``aligntime audit``: read the server's audit log."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import typer
from rich.table import Table

from aligntime.cli.console import out


def audit(
    db: Path = typer.Option(..., "--db", help="The audit database (serve --audit-db)."),
    last: int | None = typer.Option(None, "--last", min=1, help="Only the newest N requests."),
    as_json: bool = typer.Option(False, "--json", help='Print {"requests": [...]} as JSON.'),
) -> None:
    """Show audited requests: prompt, answer, decision and every candidate's scores."""
    from aligntime.server.audit import read_requests

    rows = read_requests(db, last)
    if as_json:
        out.file.write(json.dumps({"requests": rows}, ensure_ascii=False) + "\n")
        return
    table = Table(show_lines=False)
    for col in ("time (UTC)", "model", "status", "request", "answer", "cands", "best", "flags"):
        table.add_column(col, overflow="fold")
    for r in rows:
        when = datetime.fromtimestamp(r["created"], tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        msgs = r["messages"] or []
        request = next((m["content"] for m in reversed(msgs) if m.get("role") == "user"), "")
        flags = [f for f in ("fallback", "fail_closed", "stream") if r[f]]
        if r["error"]:
            flags.append(r["error"])
        table.add_row(
            when,
            r["model"],
            str(r["status"]),
            _cut(request),
            _cut(r["answer"] or ""),
            str(len(r["candidates"])),
            "-" if r["best"] is None else str(r["best"]),
            ", ".join(flags),
        )
    out.print(table)
    out.print(f"{len(rows)} request(s) in {db}")


def _cut(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
