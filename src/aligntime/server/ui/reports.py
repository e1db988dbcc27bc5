"""The ``aligntime eval`` output folders under ``serve --reports DIR``.

A report is a folder holding ``summary.json``: ``DIR`` itself, or one of its
direct subfolders. Reports are named by their folder name (``.`` for ``DIR``);
a name is looked up among the folders found, never joined to a path as given,
so no request can read outside ``DIR``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
REPORT = "report.html"
EXAMPLES = 20
"""Prompts with their candidates sent with an opened report."""


def find_reports(root: Path) -> dict[str, Path]:
    """Report name -> folder, for ``root`` and its direct subfolders with a summary."""
    found: dict[str, Path] = {}
    if (root / SUMMARY).is_file():
        found["."] = root
    try:
        children = sorted(p for p in root.iterdir() if p.is_dir())
    except OSError as exc:
        log.warning("cannot list the reports folder %s: %s", root, exc)
        return found
    for child in children:
        if (child / SUMMARY).is_file():
            found[child.name] = child
    return found


def describe(name: str, folder: Path) -> dict[str, Any]:
    """One line of the listing: what was evaluated, on how much, when."""
    summary = _summary(folder)
    config = summary.get("config", {}) if isinstance(summary, dict) else {}
    try:
        modified = (folder / SUMMARY).stat().st_mtime
    except OSError:
        modified = None
    return {
        "name": name,
        "policy": config.get("policy"),
        "prompts": config.get("prompts"),
        "strategies": config.get("strategies"),
        "ns": config.get("ns"),
        "modified": modified,
        "readable": bool(summary),
    }


def open_report(folder: Path) -> dict[str, Any]:
    """The summary, the plots present and the first prompts with their candidates."""
    return {
        "summary": _summary(folder),
        "plots": sorted(p.name for p in folder.glob("*.png") if p.is_file()),
        "has_html": (folder / REPORT).is_file(),
        "examples": _examples(folder / "results.jsonl", EXAMPLES),
    }


def plot_path(folder: Path, name: str) -> Path | None:
    """The plot ``name`` of a report, if it is one of the folder's PNG files."""
    found = {p.name: p for p in folder.glob("*.png") if p.is_file()}
    return found.get(name)


def loads(text: str | bytes) -> Any:
    """JSON as files and the audit log hold it, with ``NaN`` and infinities read as
    ``None``: a metric with no data must reach a browser as JSON, whose ``JSON.parse``
    refuses them."""
    return json.loads(text, parse_constant=lambda _: None)


def _summary(folder: Path) -> dict[str, Any]:
    try:
        data = loads((folder / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("cannot read %s: %s", folder / SUMMARY, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _examples(path: Path, limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` readable records of ``results.jsonl`` (damaged lines skipped,
    as the evaluation's own reader does)."""
    out: list[dict[str, Any]] = []
    try:
        with path.open(encoding="utf-8") as fh:
            for line in fh:
                if len(out) >= limit:
                    break
                try:
                    record = loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    out.append(record)
    except OSError:
        return []
    return out
