"""``aligntime audit``: read the server's audit log."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import typer
from rich.table import Table

from aligntime.cli.console import out, print_table


def audit(
    db: Path = typer.Option(..., "--db", help="The audit database (serve --audit-db)."),
    last: int | None = typer.Option(None, "--last", min=1, help="Only the newest N requests."),
    as_json: bool = typer.Option(False, "--json", help='Print {"requests": [...]} as JSON.'),
) -> None:
    """Show audited requests: prompt, input-gate verdict, answer, decision and scores.

    The table's ``input`` column is the input gate's action and the scorer that chose
    it; ``--json`` gives each request's whole verdict under ``input``.
    """
    try:
        from aligntime.server.audit import read_requests
    except ImportError as exc:  # the server package imports its web framework
        from aligntime.extras import missing

        raise missing("aligntime audit", exc, extra="server") from exc

    rows = read_requests(db, last)
    if as_json:
        out.file.write(json.dumps({"requests": rows}, ensure_ascii=False) + "\n")
        return
    table = Table(show_lines=False)
    columns = ("time (UTC)", "model", "status", "request", "input", "answer", "cands", "best")
    for col in (*columns, "flags"):
        table.add_column(col, overflow="fold")
    for r in rows:
        flags = [f for f in ("fallback", "fail_closed", "stream") if r[f]]
        if r["error"]:
            flags.append(str(r["error"]))
        table.add_row(
            _when(r["created"]),
            str(r["model"]),
            str(r["status"]),
            _cut(_request_text(r["messages"])),
            _verdict(r.get("input")),
            _cut(str(r["answer"] or "")),
            str(len(r["candidates"])),
            "-" if r["best"] is None else str(r["best"]),
            ", ".join(flags),
        )
    print_table(table)
    out.print(f"{len(rows)} request(s) in {db}")


def _when(created: object) -> str:
    """The row's time in UTC; a value that is not a timestamp is shown as it is."""
    try:
        when = datetime.fromtimestamp(float(created), tz=timezone.utc)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError):
        return str(created)
    return when.strftime("%Y-%m-%d %H:%M:%S")


def _verdict(decision: object) -> str:
    """The input gate's action and what chose it ("-": no gate, or not recorded)."""
    if not isinstance(decision, dict) or not decision.get("action"):
        return "-"
    action, by = str(decision["action"]), decision.get("decided_by")
    if not by:
        return action
    failed = decision.get("failed")
    if isinstance(failed, list) and by in failed:
        return f"{action} ({by} failed)"
    scores = decision.get("scores")
    value = scores.get(by) if isinstance(scores, dict) else None
    if isinstance(value, int | float):
        return f"{action} ({by} {value:.2f})"
    return f"{action} ({by})"


def _request_text(messages: object) -> str:
    """The last user message; a row not shaped as aligntime writes it shows nothing."""
    if not isinstance(messages, list):
        return ""
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    return str(users[-1].get("content", "")) if users else ""


def _cut(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
