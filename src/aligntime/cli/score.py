"""``aligntime score``: score given answers to a prompt with a policy's scorers."""

from __future__ import annotations

import json

import typer

from aligntime.cli.console import out, policy_models, pull_with_progress, status
from aligntime.errors import InputError


def score(
    answers: list[str] = typer.Argument(..., help="One or more answers to score."),
    prompt: str = typer.Option(..., "--prompt", help="The request the answers respond to."),
    policy: str = typer.Option("default", "--policy", "-p", help="Preset name or YAML file."),
    as_json: bool = typer.Option(False, "--json", help='Print {"candidates": [...]} as JSON.'),
) -> None:
    """Rate answers with the policy's scorers, in the order given (no generation)."""
    from aligntime.aligner import Aligner
    from aligntime.policy.loader import load_policy

    if not prompt.strip():
        raise InputError("the prompt is empty", hint="pass --prompt with the request")
    pol = load_policy(policy)
    pull_with_progress(policy_models(pol, include_generator=False), quiet=as_json)
    aligner = Aligner.from_policy(pol)
    with status("scoring ...", quiet=as_json):
        candidates = aligner.score(prompt, answers)
    if as_json:
        payload = {"candidates": [c.to_dict() for c in candidates]}
        out.file.write(json.dumps(payload, ensure_ascii=False) + "\n")
        return
    from aligntime.cli.render import candidates_table
    from aligntime.strategies.base import argmax_score, eligible

    # Mark the answer best-of-N would pick: the best-scored one that passed every gate.
    best = argmax_score(candidates, eligible(candidates))
    out.print(candidates_table(candidates, best, out.width))
