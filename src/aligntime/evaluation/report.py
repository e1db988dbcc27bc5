"""A self-contained HTML report: plots inlined as base64 data URIs, no scripts, no links.

The file opens in any browser with no network and no side files: styles are
inline, images are ``data:image/png;base64,...``, and every piece of text that
came from a prompt, a model or a user is HTML-escaped.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from aligntime.evaluation.replay import best_of_n_choice, to_candidates
from aligntime.evaluation.summary import describe_gate, redirects

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;vertical-align:top}
th{background:#f2f2f2}td.text{text-align:left;white-space:pre-wrap;max-width:640px}
tr.chosen{background:#e6f4e6}tr.failed{color:#999}
img{max-width:100%;border:1px solid #ddd;margin:0.5em 0}
code{background:#f6f6f6;padding:1px 3px}
"""


def write_report(
    summary: dict[str, Any],
    records: Sequence[dict[str, Any]],
    plots: Sequence[Path],
    path: Path,
    *,
    examples: int = 5,
) -> Path:
    """Write the report to ``path`` and return it."""
    cfg = summary["config"]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>aligntime eval: {escape(str(cfg['policy']))}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>aligntime eval: policy <code>{escape(str(cfg['policy']))}</code></h1>",
        _config_table(summary),
        "<h2>Plots</h2>",
        *(_image(p) for p in plots),
        "<h2>Results per strategy and N</h2>",
        "<p>Means over prompts with 95% bootstrap intervals. Win rates compare the shown "
        "answer with one random sample (no gate, no selection); the held-out scorer "
        "was not used for selection. Fallback: no candidate passed the gates.</p>",
        _results_table(summary),
        "<h2>Scorer values of the shown answer</h2>",
        _scores_table(summary),
        f"<h2>Examples (first {min(examples, len(records))} prompts, "
        f"pool of {escape(str(cfg['pool']))})</h2>",
        "<p>The highlighted row is what best-of-N shows at the largest N.</p>",
        *(_example(r) for r in records[:examples]),
        "</body></html>",
    ]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    alt = escape(path.stem.replace("_", " "))
    return f"<div><img alt='{alt}' src='data:image/png;base64,{data}'></div>"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return escape(str(value))


def _ci(d: dict[str, Any], digits: int = 3) -> str:
    if d.get("mean") is None or (isinstance(d["mean"], float) and math.isnan(d["mean"])):
        return "–"
    return f"{_fmt(d['mean'], digits)} [{_fmt(d['low'], digits)}, {_fmt(d['high'], digits)}]"


def _config_table(summary: dict[str, Any]) -> str:
    cfg = summary["config"]
    rows = {
        "prompts": f"{cfg['prompts']} ({summary['prompts']['all']} prompts: "
        f"{summary['prompts']['harmful']} harmful, {summary['prompts']['benign']} benign)",
        "N grid": ", ".join(str(n) for n in cfg["ns"]),
        "strategies": ", ".join(s["label"] for s in cfg["strategies"]),
        "selection scorers": ", ".join(cfg["scorers"]),
        "held-out scorer": cfg.get("heldout") or "none",
        "input gate": describe_gate(summary.get("input_gate")),
        "candidates sampled": summary["candidates"],
        "gate pass rate (per candidate)": _fmt(summary.get("gate_pass_rate")),
        "seed / Monte-Carlo draws": f"{cfg['seed']} / {cfg['draws']}",
        "timings (s)": ", ".join(f"{k} {v}" for k, v in summary["timings"].items()),
    }
    body = "".join(
        f"<tr><th>{escape(k)}</th><td class='text'>{escape(str(v))}</td></tr>"
        for k, v in rows.items()
    )
    return f"<table>{body}</table>"


def _results_table(summary: dict[str, Any]) -> str:
    head = (
        "<tr><th>strategy</th><th>N</th><th>score</th><th>held-out win</th>"
        "<th>held-out ceiling</th><th>proxy win</th>"
        "<th>fallback</th><th>refusal harmful</th><th>refused or redirected harmful</th>"
        "<th>refusal benign</th><th>tokens</th>"
        "<th>latency s</th><th>KL bound</th></tr>"
    )
    rows = []
    for c in summary["results"]:
        rows.append(
            f"<tr><td>{escape(c['strategy'])}</td><td>{c['n']}</td><td>{_ci(c['score'])}</td>"
            f"<td>{_ci(c['heldout_win'])}</td><td>{_ci(c.get('heldout_ceiling', {}))}</td>"
            f"<td>{_ci(c['proxy_win'])}</td>"
            f"<td>{_ci(c['fallback_rate'])}</td><td>{_ci(c['refusal_harmful'])}</td>"
            f"<td>{_ci(c.get('safe_harmful', {}))}</td><td>{_ci(c['refusal_benign'])}</td>"
            f"<td>{_fmt(c['tokens']['mean'], 0)}</td>"
            f"<td>{_fmt(c['latency_s']['mean'], 2)}</td><td>{_fmt(c['kl_bound'])}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _scores_table(summary: dict[str, Any]) -> str:
    names = list(summary["config"]["scorers"])
    head = (
        "<tr><th>strategy</th><th>N</th>"
        + "".join(f"<th>{escape(n)}</th>" for n in names)
        + "<th>held-out (normalised)</th></tr>"
    )
    rows = [
        f"<tr><td>{escape(c['strategy'])}</td><td>{c['n']}</td>"
        + "".join(f"<td>{_ci(c['scores'][n])}</td>" for n in names)
        + f"<td>{_ci(c['heldout'])}</td></tr>"
        for c in summary["results"]
    ]
    return f"<table>{head}{''.join(rows)}</table>"


def _example(record: dict[str, Any]) -> str:
    pool = to_candidates(record["candidates"])
    sampled = sum(c.origin == "sampled" for c in pool)
    chosen = next(iter(best_of_n_choice(pool, sampled).probs), None) if sampled else None
    rows_scored = [*record["candidates"], record["fallback"]]
    names = sorted({k for c in rows_scored for k in c.get("scores", {})})
    label = {True: "harmful", False: "benign", None: "unlabelled"}[record.get("harmful")]
    head = (
        "<tr><th>#</th><th>answer</th><th>tokens</th><th>combined</th>"
        + "".join(f"<th>{escape(n)}</th>" for n in names)
        + "<th>held-out</th><th>passed</th><th>refusal</th><th>redirect</th></tr>"
    )
    rows = []
    for i, c in enumerate(record["candidates"]):
        cls = "chosen" if i == chosen else "" if c["passed"] else "failed"
        rows.append(
            f"<tr class='{cls}'><td>{i}</td><td class='text'>{escape(c['text'])}</td>"
            f"<td>{c['tokens']}</td><td>{_fmt(c['score'])}</td>"
            + "".join(f"<td>{_fmt(c['scores'].get(n))}</td>" for n in names)
            + f"<td>{_fmt(c.get('heldout'))}</td><td>{'yes' if c['passed'] else 'no'}</td>"
            f"<td>{'yes' if c.get('refusal') else ''}</td>"
            f"<td>{'yes' if redirects(c) else ''}</td></tr>"
        )
    fb = record["fallback"]
    if chosen is None:
        rows.append(
            f"<tr class='chosen'><td>fallback</td><td class='text'>{escape(fb['text'])}</td>"
            f"<td></td><td>{_fmt(fb['score'])}</td>"
            + "".join(f"<td>{_fmt(fb['scores'].get(n))}</td>" for n in names)
            + f"<td>{_fmt(fb.get('heldout'))}</td><td></td><td></td><td></td></tr>"
        )
    return (
        f"<h3>{escape(str(record['id']))} ({label}"
        f"{', ' + escape(str(record['category'])) if record.get('category') else ''})</h3>"
        f"<p class='prompt'><b>Prompt:</b> {escape(record['prompt'])}</p>"
        f"{_verdict(record.get('input'))}"
        f"<table>{head}{''.join(rows)}</table>"
    )


def _verdict(verdict: dict[str, Any] | None) -> str:
    """The input gate's verdict on one prompt, as a line (nothing without a gate)."""
    if not verdict:
        return ""
    scores = ", ".join(f"{escape(k)} {_fmt(v)}" for k, v in (verdict.get("scores") or {}).items())
    by = f" by {escape(str(verdict['decided_by']))}" if verdict.get("decided_by") else ""
    note = " (nothing sampled)" if verdict.get("action") == "refuse" else ""
    return (
        f"<p><b>Input gate:</b> {escape(str(verdict.get('action')))}{by}{note}; "
        f"harm {_fmt(verdict.get('harm'))}; {scores}</p>"
    )
