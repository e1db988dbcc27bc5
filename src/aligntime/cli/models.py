"""``aligntime models``: list and pull the models aligntime can fetch by itself."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from aligntime.cli.console import out, print_table, pull_with_progress
from aligntime.models import store
from aligntime.models.catalog import CATALOG, get_spec

app = typer.Typer(help="List and pull models (cached in ALIGNTIME_HOME).", no_args_is_help=True)


@app.command("list")
def list_models(
    as_json: bool = typer.Option(
        False, "--json", help='Print {"cache": ..., "models": [...]} as one JSON object.'
    ),
) -> None:
    """Show the catalogue and which models are already cached."""
    rows = [
        {
            "name": spec.name,
            "format": spec.format,
            "pulled": store.is_pulled(spec.name),
            "licence": spec.licence,
            "size": spec.size,
            "description": spec.description,
        }
        for spec in CATALOG.values()
    ]
    cache = store.cache_dir() / "models"
    if as_json:
        out.file.write(json.dumps({"cache": str(cache), "models": rows}) + "\n")
        return
    table = Table()
    for col in ("name", "format", "pulled", "licence", "description"):
        table.add_column(col)
    for spec, row in zip(CATALOG.values(), rows, strict=True):
        pulled = "yes" if row["pulled"] else "no"
        table.add_row(spec.name, spec.format, pulled, spec.licence, spec.description)
    print_table(table)
    out.print(f"[dim]cache: {cache}[/dim]", soft_wrap=True)


@app.command("pull")
def pull(
    names: list[str] = typer.Argument(..., help="Model names from `aligntime models list`."),
    force: bool = typer.Option(False, "--force", help="Download again even if cached."),
) -> None:
    """Download, verify (sha256) and cache models."""
    for name in names:
        get_spec(name)  # fail fast, with suggestions, before any download
    pull_with_progress(names, quiet=False, force=force)
    for name in names:
        out.print(f"{name}: {store.model_path(get_spec(name))}")


@app.command("path")
def path(name: str = typer.Argument(..., help="Model name.")) -> None:
    """Print where a pulled model lives (fails if it is not pulled)."""
    out.print(str(store.resolve(name, pull=False)))
