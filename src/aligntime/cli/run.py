"""``aligntime run``: align one prompt and show every candidate."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import typer

from aligntime.cli.console import err, out, policy_models, pull_with_progress, status
from aligntime.errors import InputError
from aligntime.request import AlignRequest, RequestError, check_sampling, to_messages
from aligntime.types import GenerationParams

if TYPE_CHECKING:
    pass


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
    """Refuse a ``--temperature`` that is not a finite number in the policies' range.

    The aligner's own check, run before any model is fetched, its error naming the option.
    """
    try:
        check_sampling(GenerationParams(temperature=value))
    except RequestError as exc:
        raise InputError("--" + exc.message, hint=exc.hint) from None


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

    params = GenerationParams(max_tokens, temperature, seed=seed)
    request = AlignRequest(to_messages(read_prompt(prompt)), n, template, params)
    check_temperature(temperature)
    pol = load_policy(policy)
    request = request.checked(pol)  # the aligner's check, before any model is fetched
    pull_with_progress(policy_models(pol), quiet=as_json)
    aligner = Aligner.from_policy(pol)
    with status("loading models ...", quiet=as_json):
        aligner.load()
    with status(f"generating and scoring {request.n} candidates ...", quiet=as_json):
        result = aligner.align_request(request)
    if as_json:
        out.file.write(json.dumps(result.to_dict(), ensure_ascii=False) + "\n")
        return
    from aligntime.cli.render import print_result

    print_result(out, result)
    if result.refused:
        err.print("[yellow]the input gate refused the request; nothing was sampled")
    elif result.best is None:
        err.print("[yellow]no candidate passed the gates; the policy's fallback was returned")
