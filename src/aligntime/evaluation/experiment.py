"""``aligntime eval`` end to end: sample pools, replay the grid, write the outputs.

The pieces are importable on their own for other harnesses (search benchmarks
reuse them): :func:`aligntime.evaluation.datasets.load_prompts`,
:func:`aligntime.evaluation.runner.run_pass`,
:func:`aligntime.evaluation.summary.summarise`, and the estimators in
:mod:`aligntime.evaluation.metrics`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aligntime.aligner import Aligner
from aligntime.errors import InputError
from aligntime.evaluation.datasets import EvalPrompt
from aligntime.evaluation.heldout import HeldOut, resolve_heldout
from aligntime.evaluation.runner import PassConfig, run_pass
from aligntime.evaluation.summary import (
    ReplayConfig,
    StrategySpec,
    input_gate_counts,
    summarise,
)
from aligntime.policy.schema import Policy
from aligntime.registry import resolve

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
REPORT = "report.html"
DEFAULT_STRATEGIES = ("best_of_n", "soft_best_of_n", "vote", "rejection")


@dataclass
class EvalConfig:
    """Everything one ``aligntime eval`` run needs besides the policy and the prompts."""

    ns: tuple[int, ...] = (1, 2, 4, 8, 16)
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    heldout: str | None = None
    seed: int = 0
    draws: int = 200
    max_tokens: int | None = None
    examples: int = 5
    prompts_spec: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def parse_ns(text: str) -> tuple[int, ...]:
    """``"1,2,4"`` -> (1, 2, 4), sorted and de-duplicated; errors name the bad item."""
    values: set[int] = set()
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            value = int(item)
        except ValueError:
            raise InputError(
                f"--n: {item!r} is not a whole number", hint="e.g. --n 1,2,4,8,16"
            ) from None
        if value < 1:
            raise InputError(f"--n: values must be at least 1, got {value}")
        values.add(value)
    if not values:
        raise InputError("--n is empty", hint="e.g. --n 1,2,4,8,16")
    return tuple(sorted(values))


def strategy_specs(names: Sequence[str], policy: Policy) -> tuple[StrategySpec, ...]:
    """Strategies to replay; the policy's own kind keeps the policy's options."""
    specs = []
    for name in names:
        resolve("strategy", name)  # a typo fails here, with suggestions
        options = policy.strategy.options() if name == policy.strategy.kind else {}
        specs.append(StrategySpec(name, name, options))
    if not specs:
        raise InputError("--strategies is empty", hint="e.g. --strategies best_of_n,vote")
    return tuple(specs)


def prepare(policy: Policy, config: EvalConfig) -> tuple[Aligner, HeldOut | None]:
    """The aligner that selects (the held-out scorer taken out) and the held-out scorer.

    Every argument is checked here, before any model loads.
    """
    strategy_specs(config.strategies, policy)
    if max(config.ns) > policy.max_n:
        raise InputError(
            f"--n asks for {max(config.ns)} candidates but policy {policy.name!r} allows "
            f"at most {policy.max_n}",
            hint="lower --n or raise max_n in the policy",
        )
    selecting, heldout = resolve_heldout(policy, config.heldout)
    return Aligner.from_policy(selecting), heldout


def run_eval(
    aligner: Aligner,
    heldout: HeldOut | None,
    prompts: Sequence[EvalPrompt],
    config: EvalConfig,
    out_dir: Path,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> dict[str, Any]:
    """Run the generation pass and the replay; write summary, plots and report."""
    specs = strategy_specs(config.strategies, aligner.policy)
    started = time.perf_counter()
    pass_config = PassConfig(pool=max(config.ns), seed=config.seed, max_tokens=config.max_tokens)
    records = run_pass(aligner, heldout, prompts, pass_config, out_dir, on_progress)
    pass_s = time.perf_counter() - started

    t0 = time.perf_counter()
    replay = ReplayConfig(
        ns=config.ns,
        strategies=specs,
        budget=aligner.policy.total_budget,
        draws=config.draws,
        seed=config.seed,
    )
    names = [s.name for s in aligner.scorers]
    cells = summarise(records, replay, names, heldout.scorer if heldout else None)
    replay_s = time.perf_counter() - t0

    # Sampled candidates only: a steered request's offered refusal was not generated.
    candidates = [
        c for r in records for c in r["candidates"] if c.get("origin", "sampled") == "sampled"
    ]
    summary: dict[str, Any] = {
        "config": {
            "policy": aligner.policy.name,
            "prompts": config.prompts_spec,
            "ns": list(config.ns),
            "pool": max(config.ns),
            "strategies": [{"label": s.label, "kind": s.kind, "options": s.options} for s in specs],
            "heldout": heldout.spec if heldout else None,
            "seed": config.seed,
            "draws": config.draws,
            "budget": aligner.policy.total_budget,
            "max_tokens": config.max_tokens,
            "scorers": names,
            **config.extra,
        },
        "prompts": {
            "all": len(records),
            "harmful": sum(1 for r in records if r.get("harmful") is True),
            "benign": sum(1 for r in records if r.get("harmful") is False),
        },
        "input_gate": input_gate_counts(records),
        "candidates": len(candidates),
        "gate_pass_rate": (
            sum(1 for c in candidates if c["passed"]) / len(candidates) if candidates else None
        ),
        "timings": {
            "pass_s": round(pass_s, 2),
            "replay_s": round(replay_s, 2),
            "recorded_generate_s": round(sum(r["timings"]["generate_s"] for r in records), 2),
            "recorded_score_s": round(sum(r["timings"]["score_s"] for r in records), 2),
            "recorded_heldout_s": round(sum(r["timings"]["heldout_s"] for r in records), 2),
            "recorded_input_s": round(sum(r["timings"].get("input_s", 0.0) for r in records), 2),
        },
        "results": cells,
    }
    write_outputs(summary, records, out_dir, examples=config.examples)
    return summary


def write_outputs(
    summary: dict[str, Any], records: Sequence[dict[str, Any]], out_dir: Path, *, examples: int
) -> None:
    """summary.json, the PNG plots and the self-contained report.html."""
    from aligntime.evaluation.plots import write_plots
    from aligntime.evaluation.report import write_report

    t0 = time.perf_counter()
    plots = write_plots(summary, out_dir)
    write_report(summary, records, plots, out_dir / REPORT, examples=examples)
    summary["timings"]["report_s"] = round(time.perf_counter() - t0, 2)
    text = json.dumps(without_nan(summary), indent=2, allow_nan=False)
    (out_dir / SUMMARY).write_text(text + "\n", encoding="utf-8")


def without_nan(value: Any) -> Any:
    """NaN (a metric with no data, e.g. no held-out scorer) as JSON null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_nan(v) for v in value]
    return value
