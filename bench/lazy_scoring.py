"""Lazy scorers: the same answers scored with and without skipping, prompt by prompt.

A ``lazy`` scorer (the default policy's judge) rates only the answers that can
still be chosen once the other scorers have rated them. This bench draws each
prompt's answers once (the policy's generator, ``--n`` answers plus the input
gate's offered refusal or referral), then scores that same list twice, by two
aligners built from the same policy (so that no engine or cache sees a prompt
twice): ``full``, every scorer on every answer at once, as without ``lazy``; and
``lazy``, as the policy serves it. The order alternates from prompt to prompt.

Reported: answers, how many of them (and what share of their characters) the lazy
scorers rated, scoring seconds each way and their ratio, and whether the chosen
answer was the same on every prompt (it must be: skipping is exact).
``--no-skip`` keeps the two stages of a lazy pass but rates every answer in the
second, which separates the gain from skipping and the gain from not running the
judge beside the embedding scorers on the same cores.

Usage: ``python bench/lazy_scoring.py [--policy default] [--prompts builtin:mixed]
[--limit 50] [--n 5] [--no-skip]``. Prints JSON (progress on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import aligntime.aligner as aligner_module
from aligntime.aligner import Aligner
from aligntime.evaluation.datasets import load_prompts
from aligntime.request import AlignRequest, to_messages
from aligntime.strategies.base import argmax_score, eligible
from aligntime.types import Candidate, GenerationParams


async def run(args: argparse.Namespace) -> dict[str, Any]:
    full = Aligner.from_policy(args.policy)
    lazy = Aligner.from_policy(args.policy)
    if not lazy.lazy_scorers:
        raise SystemExit(f"policy {args.policy!r} has no lazy scorer: nothing to compare")
    full.load()
    full.load_scorers()
    lazy.load_scorers()
    prompts = load_prompts(args.prompts, args.limit)
    seconds = {"full": 0.0, "lazy": 0.0}
    answers = rated = chars = rated_chars = scored = 0
    same = True
    for k, prompt in enumerate(prompts):
        params = GenerationParams(seed=k)
        request = AlignRequest(to_messages(prompt.prompt), args.n, None, params)
        request = request.checked(full.policy)
        verdict = await full.assess(request.messages)
        if verdict is not None and verdict.action == "refuse":
            continue  # nothing is sampled or scored
        ctx = full.search_context(request, verdict, time.perf_counter())
        drawn = [*(await ctx.generate(args.n)).candidates, *ctx.offered]
        chosen: dict[str, int | None] = {}
        out: dict[str, list[Candidate]] = {}
        order = ("full", "lazy") if k % 2 else ("lazy", "full")
        for side in order:
            who = lazy if side == "lazy" else full
            t0 = time.perf_counter()
            out[side] = await who._score(  # the aligner's own scoring pass
                request.messages, drawn, verdict, request.params, lazy=side == "lazy"
            )
            seconds[side] += time.perf_counter() - t0
            chosen[side] = argmax_score(out[side], eligible(out[side]))
        names = [s.name for s in lazy.lazy_scorers]
        hit = [c for c in out["lazy"] if all(n in c.scores for n in names)]
        answers += len(drawn)
        rated += len(hit)
        chars += sum(len(c.text) for c in drawn)
        rated_chars += sum(len(c.text) for c in hit)
        same = same and chosen["full"] == chosen["lazy"]
        scored += 1
        print(f"{k + 1}/{len(prompts)}: rated {len(hit)} of {len(drawn)}", file=sys.stderr)
    return {
        "policy": args.policy,
        "prompts": scored,
        "answers": answers,
        "lazy_rated": rated,
        "lazy_rated_char_share": round(rated_chars / chars, 3) if chars else None,
        "score_s": {name: round(v, 2) for name, v in seconds.items()},
        "lazy_over_full": round(seconds["lazy"] / seconds["full"], 3) if seconds["full"] else None,
        "same_choice": same,
        "skipping": not args.no_skip,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", default="default")
    parser.add_argument("--prompts", default="builtin:mixed")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--n", type=int, default=5, help="answers drawn per prompt")
    parser.add_argument(
        "--no-skip",
        action="store_true",
        help="lazy scorers rate every answer, still after the others (the staging alone)",
    )
    args = parser.parse_args()
    if args.no_skip:
        # Every eligible or not answer is a contender: the second stage rates them all.
        aligner_module.contenders = lambda candidates, reach: list(range(len(candidates)))
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
