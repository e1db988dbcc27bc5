"""PNG plots of an evaluation summary (matplotlib, headless Agg backend).

Four figures, each against n on a log-2 axis, one line per strategy:
``score_vs_n.png`` (combined score of the shown answer, 95% band),
``winrate_vs_n.png`` (held-out win rate solid, proxy win rate dashed, vs a
single sample; the held-out ceiling dotted, in black: the same for every
strategy), ``cost_vs_n.png`` (tokens and latency) and ``kl_bound.png``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and in CI; must precede pyplot

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from aligntime.evaluation.metrics import kl_bound

PLOTS = ("score_vs_n.png", "winrate_vs_n.png", "cost_vs_n.png", "kl_bound.png")


def write_plots(summary: dict[str, Any], out_dir: Path) -> list[Path]:
    """Draw every plot into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    series = _by_strategy(summary["results"])
    ns = sorted({int(c["n"]) for c in summary["results"]})
    paths = []

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, cells in series.items():
        _line(ax, cells, "score", label, band=True)
    _axes(ax, ns, "combined score of the shown answer", "Mean score vs N (95% CI)")
    paths.append(_save(fig, out_dir / PLOTS[0]))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (label, cells) in enumerate(series.items()):
        color = f"C{i}"
        _line(ax, cells, "heldout_win", f"{label} held-out", band=True, color=color)
        _line(ax, cells, "proxy_win", f"{label} proxy", band=False, color=color, style="--")
    first = next(iter(series.values()), [])
    # Summaries written before the ceiling existed have none to draw.
    if first and all("heldout_ceiling" in c for c in first):
        _line(ax, first, "heldout_ceiling", "held-out ceiling", band=False, color="k", style=":")
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    _axes(
        ax,
        ns,
        "win rate vs one sample",
        "Held-out (solid), proxy (dashed) win rate; ceiling (dotted)",
    )
    paths.append(_save(fig, out_dir / PLOTS[1]))

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.0))
    for label, cells in series.items():
        _line(left, cells, "tokens", label, band=False)
        _line(right, cells, "latency_s", label, band=False)
    _axes(left, ns, "completion tokens per request", "Tokens vs N")
    _axes(right, ns, "estimated seconds per request", "Latency vs N")
    paths.append(_save(fig, out_dir / PLOTS[2]))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    grid = list(range(1, max(ns) + 1))
    ax.plot(grid, [kl_bound(n) for n in grid], color="C0")
    ax.scatter(ns, [kl_bound(n) for n in ns], color="C0", zorder=3)
    _axes(ax, ns, "KL(best-of-n || base), nats", "Best-of-N KL bound: log N - (N-1)/N")
    paths.append(_save(fig, out_dir / PLOTS[3]))
    return paths


def _by_strategy(cells: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    series: dict[str, list[dict[str, Any]]] = {}
    for cell in cells:
        series.setdefault(cell["strategy"], []).append(cell)
    for values in series.values():
        values.sort(key=lambda c: c["n"])
    return series


def _value(cell: dict[str, Any], metric: str, part: str) -> float:
    v = cell[metric].get(part) if isinstance(cell[metric], dict) else None
    return math.nan if v is None else float(v)


def _line(
    ax: Axes,
    cells: list[dict[str, Any]],
    metric: str,
    label: str,
    *,
    band: bool,
    color: str | None = None,
    style: str = "-",
) -> None:
    xs = [c["n"] for c in cells]
    ys = [_value(c, metric, "mean") for c in cells]
    (line,) = ax.plot(xs, ys, style, marker="o", label=label, color=color)
    if band:
        lows = [_value(c, metric, "low") for c in cells]
        highs = [_value(c, metric, "high") for c in cells]
        ax.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.15)


def _axes(ax: Axes, ns: list[int], ylabel: str, title: str) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns)
    ax.set_xticklabels([str(n) for n in ns])
    ax.set_xlabel("N (candidates)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
