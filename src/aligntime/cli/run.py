"""``aligntime run``: align one prompt and show every candidate."""

from __future__ import annotations

import json
import math
import sys

import typer

from aligntime.cli.console import err, out, policy_models, pull_with_progress, status
from aligntime.errors import InputError


def read_prompt(prompt: str | None) -> str:
    """The prompt argument; standard input when it is ``-``, or absent and stdin is piped."""
    if prompt is None:
        if sys.stdin is None or sys.stdin.isatty():
            # A usage error (click's message, exit 2), as for any missing argument.
            raise typer.BadParameter(
                "give a prompt, or pipe one on standard input", param_hint="'PROMPT'"
            )
        prompt = "-"
    text = _read_stdin() if prompt == "-" else prompt
    if any("\ud800" <= ch <= "\udfff" for ch in text):
        # Python keeps bytes of an argument that are not UTF-8 as lone surrogates.
        raise InputError("the prompt is not UTF-8 text", hint="give the request as UTF-8 text")
    if not text.strip():
        raise InputError("the prompt is empty", hint="give a non-empty request")
    return text


def _read_stdin() -> str:
    """Standard input as UTF-8 text; anything else is an input error, not a crash."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # already text (a test harness)
        return sys.stdin.read()
    data: bytes = stream.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"standard input is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start} is not valid UTF-8",
            hint="pipe a UTF-8 text file as the prompt",
        ) from None


def check_temperature(value: float | None) -> None:
    """Refuse a ``--temperature`` that is not a finite number in the policies' range."""
    if value is None:
        return
    if not math.isfinite(value):
        raise InputError(f"--temperature must be a finite number, got {value}")
    from pydantic import ValidationError

    from aligntime.generators.options import SamplingOptions

    try:  # the range a policy's generator.temperature allows
        SamplingOptions(model="-", temperature=value)
    except ValidationError as exc:
        raise InputError(f"--temperature: {exc.errors()[0]['msg']}, got {value:g}") from None


def run(
    prompt: str | None = typer.Argument(
        None,
        show_default=False,
        help="The request to answer; - or none reads standard input (when it is piped).",
    ),
    n: int | None = typer.Option(None, "-n", "--n", help="Candidates to sample (policy default)."),
    policy: str = typer.Option("default", "--policy", "-p", help="Preset name or YAML file."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Tokens per candidate."),
    temperature: float | None = typer.Option(None, "--temperature", help="Sampling temperature."),
    template: str | None = typer.Option(None, "--template", "-t", help="Task template to use."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed for reproducible runs."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Sample N answers, score them, and print the best (with every candidate's scores)."""
    from aligntime.aligner import Aligner
    from aligntime.policy.loader import load_policy

    text = read_prompt(prompt)
    check_temperature(temperature)
    pol = load_policy(policy)
    if n is not None and not 1 <= n <= pol.max_n:
        raise InputError(f"n must be between 1 and {pol.max_n} for policy {pol.name!r}, got {n}")
    pull_with_progress(policy_models(pol), quiet=as_json)
    aligner = Aligner.from_policy(pol)
    with status("loading models ...", quiet=as_json):
        aligner.load()
    count = n or pol.n
    with status(f"generating and scoring {count} candidates ...", quiet=as_json):
        result = aligner.align(
            text, n, template=template, max_tokens=max_tokens, temperature=temperature, seed=seed
        )
    if as_json:
        out.file.write(json.dumps(result.to_dict(), ensure_ascii=False) + "\n")
        return
    from aligntime.cli.render import print_result

    print_result(out, result)
    if result.refused:
        err.print("[yellow]the input gate refused the request; nothing was sampled")
    elif result.best is None:
        err.print("[yellow]no candidate passed the gates; the policy's fallback was returned")
