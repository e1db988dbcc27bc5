"""``aligntime export``: chosen and rejected answers as SFT, DPO or KTO data for TRL."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from aligntime.cli.console import err, out
from aligntime.errors import InputError

FORMATS = ("sft", "dpo", "kto")


def export(
    output: Path = typer.Option(..., "--output", "-o", help="JSONL file to write."),
    fmt: str = typer.Option(..., "--format", "-f", help="sft, dpo or kto (TRL's formats)."),
    from_batch: Path | None = typer.Option(None, "--from-batch", help="An aligntime batch output."),
    from_eval: Path | None = typer.Option(
        None, "--from-eval", help="An aligntime eval --out folder."
    ),
    from_audit: Path | None = typer.Option(None, "--from-audit", help="A serve --audit-db file."),
    include_failed: bool = typer.Option(
        False, "--include-failed", help="Keep chosen answers that failed a gate (off: dropped)."
    ),
    min_score: float | None = typer.Option(
        None, "--min-score", help="Least combined score of a chosen answer."
    ),
    min_margin: float = typer.Option(
        0.1, "--min-margin", help="Least score gap between chosen and a rejected answer."
    ),
    pairs: int = typer.Option(1, "--pairs", help="Most rejected answers per request (dpo, kto)."),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as one JSON object."),
) -> None:
    """Write the aligned answers as training data (best-of-N distillation)."""
    from aligntime.export import ExportFilters, examples, read_groups

    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    given = [
        (k, p) for k, p in (("batch", from_batch), ("eval", from_eval), ("audit", from_audit)) if p
    ]
    if len(given) != 1:
        raise InputError("give exactly one of --from-batch, --from-eval or --from-audit")
    if pairs < 1:
        raise InputError(f"--pairs must be at least 1, got {pairs}")
    kind, source = given[0]
    groups = read_groups(kind, source)  # type: ignore[arg-type]  # one of the three names
    filters = ExportFilters(
        only_passed=not include_failed, min_score=min_score, min_margin=min_margin, pairs=pairs
    )
    rows = list(examples(groups, fmt, filters))  # type: ignore[arg-type]  # checked above
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(output)
    counts = {"requests": len(groups), "rows": len(rows), "format": fmt, "output": str(output)}
    if as_json:
        out.file.write(json.dumps(counts) + "\n")
    else:
        err.print(f"{len(rows)} {fmt} rows from {len(groups)} requests -> {output}")
