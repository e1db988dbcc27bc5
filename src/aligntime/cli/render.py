"""Rich rendering of results: every candidate, its scores, and why it won or lost."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from aligntime.types import Candidate, Result


def verdict(candidates: Sequence[Candidate], index: int, best: int | None) -> str:
    """Why candidate ``index`` was chosen or not, in a few words."""
    cand = candidates[index]
    if index == best:
        return "chosen: highest score" if cand.passed else "chosen"
    if not cand.passed:
        return "failed gate: " + ", ".join(cand.gate_failures or ("?",))
    if best is None:
        return "not chosen"
    top = candidates[best].score
    if cand.score is not None and top is not None:
        if cand.score < top:
            return f"lower score ({cand.score:.3f} < {top:.3f})"
        return f"not drawn (score {cand.score:.3f})"
    return "not chosen"


def candidates_table(candidates: Sequence[Candidate], best: int | None, width: int = 60) -> Table:
    names: list[str] = []
    for cand in candidates:
        names += [k for k in cand.scores if k not in names]
    table = Table(show_lines=True, expand=False)
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    table.add_column("tokens", justify="right")
    table.add_column("verdict")
    table.add_column("answer", max_width=width, overflow="fold")
    for i, cand in enumerate(candidates):
        style = "bold green" if i == best else ("red" if not cand.passed else "")
        raw = [f"{cand.scores[n]:.3f}" if n in cand.scores else "-" for n in names]
        text = cand.text.strip().replace("\n", " ")
        if len(text) > 4 * width:
            text = text[: 4 * width] + " ..."
        table.add_row(
            ("* " if i == best else "") + str(i),
            "-" if cand.score is None else f"{cand.score:.3f}",
            *raw,
            str(cand.tokens),
            verdict(candidates, i, best),
            text,
            style=style,
        )
    return table


def print_result(console: Console, result: Result) -> None:
    console.print(candidates_table(result.candidates, result.best))
    if result.best is not None:
        title = f"answer (candidate {result.best}, policy {result.policy})"
        console.print(Panel(Text(result.text.strip()), title=title, border_style="green"))
    else:
        console.print(
            Panel(Text(result.text), title="fallback: no candidate passed", border_style="yellow")
        )
    t, u = result.timings, result.usage
    console.print(
        f"[dim]generate {t.generate_s:.2f}s · score {t.score_s:.2f}s · total {t.total_s:.2f}s · "
        f"{u.prompt_tokens} prompt + {u.completion_tokens} completion tokens[/dim]"
    )
