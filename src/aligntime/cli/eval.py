"""``aligntime eval`` and ``aligntime eval-scorer``: which strategy, which N, which scorer."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import typer

from aligntime.cli.console import err, out, policy_models, print_table, pull_with_progress, status


def evaluate(
    policy: str = typer.Option("default", "--policy", "-p", help="Preset name or YAML file."),
    prompts: str = typer.Option(
        ..., "--prompts", help="JSONL or text file, or builtin:harmful|benign|mtbench|mixed."
    ),
    n: str = typer.Option("1,2,4,8,16", "--n", help="Comma-separated N values to evaluate."),
    strategies: str = typer.Option(
        "best_of_n,soft_best_of_n,vote,rejection", "--strategies", help="Strategies to compare."
    ),
    out_dir: Path = typer.Option(..., "--out", help="Directory for results and the report."),
    limit: int | None = typer.Option(None, "--limit", help="Use only the first K prompts."),
    heldout: str | None = typer.Option(
        None,
        "--heldout",
        help="Held-out scorer: a policy scorer name (taken out of selection), a scorer kind, "
        "an inline YAML scorer spec, or 'none'. Default: a judge with a different question, on "
        "a model no judge of the policy runs (Qwen2.5-Coder-0.5B for the presets).",
    ),
    seed: int = typer.Option(0, "--seed", help="Sampling and Monte-Carlo seed."),
    draws: int = typer.Option(200, "--draws", help="Monte-Carlo draws per prompt and cell."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Tokens per candidate."),
    examples: int = typer.Option(5, "--examples", help="Example prompts shown in the report."),
    as_json: bool = typer.Option(False, "--json", help="Print summary.json to stdout."),
) -> None:
    """Sample the largest N once per prompt, replay every strategy and N, write a report."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from aligntime.errors import InputError
    from aligntime.evaluation.datasets import load_prompts
    from aligntime.evaluation.experiment import EvalConfig, parse_ns, prepare, run_eval
    from aligntime.extras import require
    from aligntime.policy.loader import load_policy

    # Fail before the generation pass, not after it, when the plots cannot be drawn.
    require("matplotlib", what="the plots of aligntime eval")
    if draws < 1:
        raise InputError(f"--draws must be at least 1, got {draws}")
    if max_tokens is not None and max_tokens < 1:
        raise InputError(f"--max-tokens must be at least 1, got {max_tokens}")
    config = EvalConfig(
        ns=parse_ns(n),
        strategies=tuple(s.strip() for s in strategies.split(",") if s.strip()),
        heldout=heldout,
        seed=seed,
        draws=draws,
        max_tokens=max_tokens,
        examples=examples,
        prompts_spec=prompts,
    )
    items = load_prompts(prompts, limit)
    pol = load_policy(policy)
    pull_with_progress(policy_models(pol), quiet=as_json)
    aligner, held = prepare(pol, config)
    if held is not None:
        # The held-out scorer may name a catalogue model that the policy does not use.
        from aligntime.models.catalog import CATALOG

        model = str(getattr(getattr(held.scorer, "options", None), "model", ""))
        pull_with_progress([model] if model in CATALOG else [], quiet=as_json)
    with status("loading models ...", quiet=as_json):
        aligner.load()
    with Progress(
        TextColumn("[bold]eval"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=as_json,
    ) as progress:
        task = progress.add_task("", total=len(items))

        plain = not as_json and not err.is_terminal
        started = time.perf_counter()

        def advance(done: int, total: int, prompt_id: str) -> None:
            progress.update(task, completed=done, description=prompt_id)
            if plain:  # a log file gets one line per prompt instead of a live bar
                err.print(f"eval {done}/{total} {prompt_id} {time.perf_counter() - started:.0f}s")

        summary = run_eval(aligner, held, items, config, out_dir, advance)
    aligner.close()
    if as_json:
        out.file.write((out_dir / "summary.json").read_text(encoding="utf-8"))
        return
    _print_summary(summary, out_dir)


def _print_summary(summary: dict[str, Any], out_dir: Path) -> None:
    from rich.table import Table

    table = Table(title=f"aligntime eval: {summary['config']['policy']}")
    table.add_column("strategy")
    for col in ("N", "score", "held-out win", "ceiling", "proxy win", "fallback", "refuse harmful"):
        table.add_column(col, justify="right")
    # Refused or referred to qualified help: what the safety target counts.
    table.add_column("safe harmful", justify="right")
    for col in ("refuse benign", "tokens", "latency s", "KL bound"):
        table.add_column(col, justify="right")
    for c in summary["results"]:
        table.add_row(
            c["strategy"],
            str(c["n"]),
            _m(c["score"]),
            _m(c["heldout_win"]),
            # Records summarised before the ceiling existed have none.
            _m(c.get("heldout_ceiling", {})),
            _m(c["proxy_win"]),
            _m(c["fallback_rate"]),
            _m(c["refusal_harmful"]),
            _m(c.get("safe_harmful", {})),
            _m(c["refusal_benign"]),
            _m(c["tokens"], 0),
            _m(c["latency_s"], 2),
            f"{c['kl_bound']:.3f}",
        )
    print_table(table)
    if summary.get("input_gate"):
        from aligntime.evaluation.summary import describe_gate

        out.print(f"input gate: {describe_gate(summary['input_gate'])}")
    out.print(f"95% intervals: {out_dir / 'summary.json'}; report: {out_dir / 'report.html'}")


def _m(d: dict[str, Any], digits: int = 3) -> str:
    v = d.get("mean")
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def evaluate_scorer(
    data: Path = typer.Option(..., "--data", help="Pairs JSONL, or graded CSV/JSONL."),
    policy: str = typer.Option("default", "--policy", "-p", help="Preset name or YAML file."),
    scorer: str | None = typer.Option(None, "--scorer", help="Evaluate only this scorer."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    """Pairwise accuracy, AUC and Spearman of each scorer on labelled pairs or grades."""
    from aligntime.aligner import Aligner
    from aligntime.errors import InputError
    from aligntime.evaluation.pairwise import Pair
    from aligntime.evaluation.scorer_quality import evaluate_graded, evaluate_pairs, load_data
    from aligntime.policy.loader import load_policy

    items = load_data(data)
    pol = load_policy(policy)
    if scorer is not None:
        names = [s.name for s in pol.scorers]
        if scorer not in names:
            raise InputError(
                f"policy {pol.name!r} has no scorer {scorer!r}",
                hint="its scorers: " + (", ".join(names) or "none"),
            )
        pol = pol.model_copy(update={"scorers": [s for s in pol.scorers if s.name == scorer]})
    pull_with_progress(policy_models(pol, include_generator=False), quiet=as_json)
    aligner = Aligner.from_policy(pol)
    normalisers = {s.name: s.normalise for s in aligner.scorers}
    with status(f"scoring {len(items)} items ...", quiet=as_json):
        if items and isinstance(items[0], Pair):
            report = evaluate_pairs(items, aligner.score, normalisers)  # type: ignore[arg-type]
        else:
            report = evaluate_graded(items, aligner.score, normalisers)  # type: ignore[arg-type]
    aligner.close()
    report["policy"] = pol.name
    report["data"] = str(data)
    if as_json:
        from aligntime.evaluation.experiment import without_nan

        out.file.write(json.dumps(without_nan(report), ensure_ascii=False) + "\n")
        return
    from rich.table import Table

    table = Table(title=f"{report['kind']}: {report['items']} items, policy {pol.name}")
    for col in ("scorer", "pairwise accuracy", "AUC", "Spearman", "items"):
        table.add_column(col, justify="left" if col == "scorer" else "right")
    for name, row in report["scorers"].items():
        table.add_row(
            name,
            _num(row.get("pairwise_accuracy")),
            _num(row.get("auc")),
            _num(row.get("spearman")),
            str(row["items"]),
        )
    print_table(table)


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}"
