"""``aligntime policies``: list, show and validate policies; the options they can set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.syntax import Syntax
from rich.table import Table

from aligntime import registry
from aligntime.cli.console import out, print_table
from aligntime.policy.loader import load_policy, preset_names, preset_text

app = typer.Typer(help="List, show and validate policies.", no_args_is_help=True)


@app.command("list")
def list_policies(
    as_json: bool = typer.Option(False, "--json", help='Print {"policies": [...]} as JSON.'),
) -> None:
    """Show the presets shipped with aligntime."""
    presets = [(name, load_policy(name)) for name in preset_names()]
    rows = []
    for name, pol in presets:
        rows.append(
            {
                "name": name,
                "n": pol.n,
                "backend": pol.generator.backend,
                "strategy": pol.strategy.kind,
                "scorers": [{"name": s.name, "kind": s.kind} for s in pol.scorers],
                "description": pol.description,
            }
        )
    if as_json:
        out.file.write(json.dumps({"policies": rows}) + "\n")
        return
    table = Table()
    for col in ("name", "n", "strategy", "scorers", "description"):
        table.add_column(col)
    for name, pol in presets:
        scorers = ", ".join(f"{s.name}({s.kind})" for s in pol.scorers) or "-"
        table.add_row(name, str(pol.n), pol.strategy.kind, scorers, pol.description)
    print_table(table)


@app.command("show")
def show(name: str = typer.Argument(..., help="Preset name or YAML file.")) -> None:
    """Print a policy's YAML."""
    load_policy(name)  # validates, and errors helpfully on a typo
    text = preset_text(name) if name in preset_names() else Path(name).read_text("utf-8")
    out.print(Syntax(text, "yaml", word_wrap=True))


@app.command("validate")
def validate(files: list[str] = typer.Argument(..., help="Policy files or preset names.")) -> None:
    """Check policies; the first problem is reported with its file, line and field."""
    for name in files:
        pol = load_policy(name)
        out.print(f"{name}: ok (policy {pol.name!r}, {len(pol.scorers)} scorers)")


@app.command("schema")
def schema(
    as_json: bool = typer.Option(
        False, "--json", help='Print {"generator": {NAME: JSON schema, ...}, ...} as JSON.'
    ),
) -> None:
    """Show every option of every registered generator, scorer and strategy."""
    found = {kind: registry.option_schemas(kind) for kind in registry.KINDS}
    if as_json:
        out.file.write(json.dumps(found, indent=1) + "\n")
        return
    for kind, schemas in found.items():
        table = Table(title=f"{kind} ({registry.selector(kind)}: NAME)", title_justify="left")
        for col in ("name", "option", "type", "default", "description"):
            table.add_column(col, overflow="fold")
        for name, model_schema in schemas.items():
            props = model_schema.get("properties", {})
            if not props:
                table.add_row(name, "-", "", "", model_schema.get("description", "no options"))
            required = model_schema.get("required", [])
            for i, (option, prop) in enumerate(props.items()):
                # No "default" in the schema: required, or built per instance (an empty list).
                default = json.dumps(prop["default"]) if "default" in prop else ""
                default = "(required)" if option in required else default
                row = (option, _type(prop), default, prop.get("description", ""))
                table.add_row(name if i == 0 else "", *row)
        print_table(table)


def _type(prop: dict[str, Any]) -> str:
    """A JSON schema property's type, short: ``integer``, ``string | null``, ``list``."""
    if "enum" in prop:
        return " | ".join(json.dumps(v) for v in prop["enum"])
    if "anyOf" in prop:
        return " | ".join(_type(p) for p in prop["anyOf"])
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    name = str(prop.get("type", "any"))
    return {"array": "list", "object": "mapping"}.get(name, name)
