"""Benchmark the input gate: what it adds to a request, and what a refusal costs.

For a policy with an ``input`` section (or any policy plus ``--gate``, an inline
YAML input section), on one machine in one run:

- ``gate_s``: the input gate's own seconds per request (``Result.input.seconds``:
  every input scorer, concurrently) on benign and on harmful prompts: the latency
  the gate adds to every request;
- ``align_s``: full ``align`` wall seconds on the benign prompts with the gate and
  with the policy's ``input`` section removed, paired by prompt and seed, the order
  alternating (the engine's prefix cache speeds up whichever runs second); the
  difference also carries sampling and machine-load noise: the gate's own seconds
  are the direct figure;
- ``refused_s``: wall seconds of the requests the gate refused (nothing sampled),
  and their mean as a share of a full benign ``align`` with the gate;
- how many harmful and benign prompts the gate refused and steered;
- ``behind_system``: the gate alone (nothing sampled) on the same prompts sent after a
  deployment system prompt (``--system``, 70 words by default): its seconds and its
  actions. A request-level classifier must not let a long system prompt hide a request.

Models load before timing starts. Usage:
``python bench/input_gate.py [--policy default] [--gate '{scorers: [...]}']``
``[--limit 8] [--n 5] [--max-tokens 128] [--system TEXT]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
from typing import Any

import yaml

from aligntime import Aligner
from aligntime.errors import AligntimeError
from aligntime.evaluation.datasets import load_prompts
from aligntime.policy.loader import load_policy
from aligntime.policy.schema import InputSpec
from aligntime.types import Message, RequestAssessment, Result

SYSTEM = (
    "You are Sam, the virtual assistant of the Riverside Public Library. Help visitors find "
    "books, renew loans, book study rooms and learn about events. Keep answers short and "
    "friendly, and say when you are not sure. Opening hours are 9am to 8pm on weekdays and "
    "10am to 4pm on Saturdays; the library is closed on Sundays and public holidays."
)
"""A system prompt of the kind a deployment sends with every request."""


def _stats(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "mean": None, "median": None, "max": None}
    return {
        "count": len(values),
        "mean": round(statistics.fmean(values), 4),
        "median": round(statistics.median(values), 4),
        "max": round(max(values), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="default")
    parser.add_argument("--gate", help="inline YAML input section, replacing the policy's")
    parser.add_argument("--benign", default="builtin:benign")
    parser.add_argument("--harmful", default="builtin:harmful")
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--system", default=SYSTEM, help="system prompt for behind_system")
    args = parser.parse_args(argv)
    try:
        policy = load_policy(args.policy)
        if args.gate:
            policy = policy.model_copy(
                update={"input": InputSpec.model_validate(yaml.safe_load(args.gate))}
            )
        if policy.input is None:
            raise SystemExit("the policy has no input section: give one with --gate")
        benign = [p.prompt for p in load_prompts(args.benign, args.limit)]
        harmful = [p.prompt for p in load_prompts(args.harmful, args.limit)]
        gated = Aligner.from_policy(policy)
        bare = Aligner(
            policy.model_copy(update={"input": None}),
            generator=gated.generator,
            scorers=gated.scorers,
            strategy=gated.strategy,
        )
        gated.load()
        gated.align("Warm-up: say hello.", 1, max_tokens=8)

        def run(al: Aligner, prompt: str, i: int) -> Result:
            return al.align(prompt, args.n, max_tokens=args.max_tokens, seed=args.seed + i)

        # The engine caches prompt prefixes, so whichever aligner sees a prompt second
        # runs faster: alternate which goes first.
        with_gate: list[Result] = []
        without_gate: list[Result] = []
        for i, p in enumerate(benign):
            if i % 2 == 0:
                with_gate.append(run(gated, p, i))
                without_gate.append(run(bare, p, i))
            else:
                without_gate.append(run(bare, p, i))
                with_gate.append(run(gated, p, i))
        on_harmful = [run(gated, p, i) for i, p in enumerate(harmful)]

        def behind(prompt: str) -> RequestAssessment:
            conversation = [Message("system", args.system), Message("user", prompt)]
            verdict = asyncio.run(gated.assess(conversation))
            assert verdict is not None
            return verdict

        behind_benign = [behind(p) for p in benign]
        behind_harmful = [behind(p) for p in harmful]
        gated.close()
    except AligntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def gate_s(results: list[Result]) -> list[float]:
        return [r.input.seconds for r in results if r.input is not None]

    def actions(results: list[Result]) -> dict[str, int]:
        return _count([r.input for r in results if r.input is not None])

    refused = [r.timings.total_s for r in with_gate + on_harmful if r.refused]
    sampled = [r.timings.total_s for r in with_gate if not r.refused]
    report: dict[str, Any] = {
        "policy": policy.name,
        "input": policy.input.model_dump(exclude_none=True),
        "n": args.n,
        "max_tokens": args.max_tokens,
        "machine": {"cpus": _cpus(), "python": platform.python_version()},
        "gate_s": {"benign": _stats(gate_s(with_gate)), "harmful": _stats(gate_s(on_harmful))},
        "align_s": {
            "benign_with_gate": _stats(sampled),
            "benign_without_gate": _stats([r.timings.total_s for r in without_gate]),
        },
        "refused_s": _stats(refused),
        "refused_share_of_align": (
            round(statistics.fmean(refused) / statistics.fmean(sampled), 4)
            if refused and sampled
            else None
        ),
        "actions": {"benign": actions(with_gate), "harmful": actions(on_harmful)},
        "behind_system": {
            "gate_s": {
                "benign": _stats([a.seconds for a in behind_benign]),
                "harmful": _stats([a.seconds for a in behind_harmful]),
            },
            "actions": {"benign": _count(behind_benign), "harmful": _count(behind_harmful)},
        },
    }
    print(json.dumps(report, indent=1))
    return 0


def _count(verdicts: list[RequestAssessment]) -> dict[str, int]:
    out = {"pass": 0, "steer": 0, "refuse": 0}
    for v in verdicts:
        out[v.action] += 1
    return out


def _cpus() -> int | None:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


if __name__ == "__main__":
    raise SystemExit(main())
