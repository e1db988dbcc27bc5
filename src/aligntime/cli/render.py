"""Rich rendering of results: every candidate, its scores, and why it won or lost."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from aligntime.types import Candidate, RequestAssessment, Result


def verdict(candidates: Sequence[Candidate], index: int, best: int | None) -> str:
    """Why candidate ``index`` was chosen or not, in a few words."""
    cand = candidates[index]
    if index == best:
        return "chosen"
    if not cand.passed:
        return "failed gate: " + ", ".join(cand.gate_failures or ("?",))
    if best is None:
        return "not chosen"
    top = candidates[best].score
    if cand.score is not None and top is not None and cand.score < top:
        return "lower score"
    # Soft best-of-N and voting may pass over a higher score.
    return "not drawn" if (cand.score or 0.0) >= (top or 0.0) else "not chosen"


def candidates_table(candidates: Sequence[Candidate], best: int | None, width: int = 100) -> Table:
    """Every candidate with its scores and verdict; an answer preview fills what is left
    of ``width`` (the console's width), and is left out when too little is."""
    names: list[str] = []
    for cand in candidates:
        names += [k for k in cand.scores if k not in names]
    rows: list[list[str]] = []
    for i, cand in enumerate(candidates):
        raw = [f"{cand.scores[n]:.3f}" if n in cand.scores else "-" for n in names]
        rows.append(
            [
                ("* " if i == best else "") + str(i),
                "-" if cand.score is None else f"{cand.score:.3f}",
                *raw,
                str(cand.tokens),
                verdict(candidates, i, best),
            ]
        )
    headers = ["#", "score", *names, "tokens", "verdict"]
    used = 4 + sum(
        3 + max(len(h), *(len(r[j]) for r in rows)) if rows else 3 + len(h)
        for j, h in enumerate(headers)
    )
    preview = width - used - 3
    show_preview = preview >= 12
    # A missing value is a lazy scorer's skip: say so, rather than leave a bare dash.
    skipped = any(n not in cand.scores for cand in candidates for n in names)
    caption = "- not rated: a lazy scorer skips answers it could not lift to first place"
    table = Table(expand=False, caption=caption if skipped else None)
    for header in headers:
        justify = "left" if header == "verdict" else "right"
        table.add_column(header, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    if show_preview:
        table.add_column("answer", width=preview, no_wrap=True, overflow="ellipsis")
    for i, (cand, row) in enumerate(zip(candidates, rows, strict=True)):
        style = "bold green" if i == best else ("red" if not cand.passed else "")
        cells = [*row, " ".join(cand.text.split())] if show_preview else row
        table.add_row(*cells, style=style)
    return table


def input_line(assessment: RequestAssessment | None) -> str | None:
    """One line on the input gate's verdict, e.g. ``input gate: refuse (harm 0.99 by 'harm')``;
    ``None`` for a policy without an input gate."""
    if assessment is None:
        return None
    a = assessment
    details: list[str] = []
    if a.failed:
        details.append(f"{', '.join(map(repr, a.failed))} failed: fail closed")
    elif a.decided_by is not None:
        value = a.scores.get(a.decided_by, float("nan"))
        label = "harm" if a.harm is not None and value == a.harm else "score"
        details.append(f"{label} {value:.2f} by {a.decided_by!r}")
    if a.harm is not None and not (details and details[0].startswith("harm ")):
        details.append(f"harm {a.harm:.2f}")
    if a.advice is not None:
        details.append(f"advice {a.advice:.2f}")
    if a.steer is not None:
        details.append(f"steer {a.steer!r}")
    if a.labels:
        details.append(", ".join(a.labels))
    if not details and a.scores:
        details.append(", ".join(f"{k} {v:.2f}" for k, v in a.scores.items()))
    return f"input gate: {a.action}" + (f" ({'; '.join(details)})" if details else "")


def print_result(console: Console, result: Result) -> None:
    line = input_line(result.input)
    if line is not None and result.input is not None:
        style = {"refuse": "yellow", "steer": "cyan"}.get(result.input.action, "")
        console.print(Text(line, style=style))
    if result.refused:
        console.print(
            Panel(Text(result.text), title="refused by the input gate", border_style="yellow")
        )
        _print_costs(console, result)
        return
    console.print(candidates_table(result.candidates, result.best, console.width))
    if result.best is not None:
        title = f"answer (candidate {result.best}, policy {result.policy})"
        console.print(Panel(Text(result.text.strip()), title=title, border_style="green"))
    else:
        console.print(
            Panel(Text(result.text), title="fallback: no candidate passed", border_style="yellow")
        )
    _print_costs(console, result)


def _print_costs(console: Console, result: Result) -> None:
    t, u = result.timings, result.usage
    gate = f"input gate {result.input.seconds:.2f}s · " if result.input is not None else ""
    console.print(
        f"[dim]{gate}generate {t.generate_s:.2f}s · score {t.score_s:.2f}s · "
        f"total {t.total_s:.2f}s · "
        f"{u.prompt_tokens} prompt + {u.completion_tokens} completion tokens[/dim]"
    )
