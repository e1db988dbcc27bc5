"""``aligntime chat``: an interactive conversation in which every reply is aligned."""

from __future__ import annotations

import typer

from aligntime.cli.console import err, out, policy_models, pull_with_progress, status
from aligntime.request import AlignRequest
from aligntime.types import GenerationParams, Message

HELP = "commands: /reset forgets the conversation, /candidates toggles the table, /exit quits"


def chat(
    policy: str = typer.Option("default", "--policy", "-p", help="Preset name or YAML file."),
    n: int | None = typer.Option(None, "-n", "--n", help="Candidates per reply (policy default)."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Tokens per candidate."),
    show_candidates: bool = typer.Option(
        False, "--candidates", help="Show every candidate's scores after each reply."
    ),
) -> None:
    """Chat with the aligned model; the conversation is kept between turns."""
    from aligntime.aligner import Aligner
    from aligntime.cli.render import candidates_table, input_line
    from aligntime.policy.loader import load_policy

    pol = load_policy(policy)
    pull_with_progress(policy_models(pol), quiet=False)
    aligner = Aligner.from_policy(pol)
    with status("loading models ...", quiet=False):
        aligner.load()
    err.print(f"[dim]policy {pol.name}; {HELP}[/dim]")
    history: list[Message] = []
    while True:
        try:
            line = input("you> ")
        except EOFError:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history.clear()
            err.print("[dim]conversation cleared[/dim]")
            continue
        if text == "/candidates":
            show_candidates = not show_candidates
            continue
        history.append(Message("user", text))
        request = AlignRequest(list(history), n, params=GenerationParams(max_tokens))
        with status("thinking ...", quiet=False):
            result = aligner.align_request(request)
        gate = input_line(result.input)
        # A steer or a refusal is always worth a line; a pass only with the table.
        acted = result.input is not None and result.input.action != "pass"
        if gate is not None and (show_candidates or acted):
            err.print(f"[dim]{gate}[/dim]")
        if show_candidates and result.candidates:
            out.print(candidates_table(result.candidates, result.best, out.width))
        reply = result.text.strip()
        out.print(f"[bold green]assistant>[/bold green] {reply}")
        history.append(Message("assistant", reply))
