"""The judge's prompt layout: pairs accuracy and prompt tokens evaluated, two layouts.

``question_last`` is the judge's layout today: the rubric question after the
answer, so every probe re-evaluates the question's ~30 tokens. ``rubric_first``
(issue 17, not adopted until its accuracy is measured) puts the question in the
system message, a prefix shared by every probe, so only the answer (and a
five-token reminder) is new. This bench
scores every pair of a pairs file (default ``tests/data/pairs.jsonl``) with both
layouts on the same engine, pair by pair in alternating order, and reports for
each layout:

- the judge's pairwise accuracy alone (good scored above bad; a tie counts half);
- prompt tokens llama.cpp actually evaluated per probe (its ``timings.prompt_n``,
  the tokens not found in a slot's cache), for a request's first answer and its
  second answer, and the probe's whole prompt for comparison;
- the pairs where the two layouts disagree, and which layout ``Judge.prompt`` uses.

Usage: ``python bench/judge_prefix.py [--data tests/data/pairs.jsonl] [--limit N]``.
Prints JSON (progress on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
from typing import Any

from aligntime.evaluation.pairwise import load_pairs
from aligntime.generators.llamacpp import LlamaCppGenerator
from aligntime.scorers.judge import SYSTEM, Judge, p_yes
from aligntime.types import Message


def question_last(judge: Judge, request: str, answer: str) -> list[Message]:
    """The judge conversation as ``Judge.prompt`` builds it today: the question last."""
    cut = answer[: judge.options.max_answer_chars]
    body = (
        f"Request:\n{request.strip()}\n\nResponse:\n{cut.strip() or '(empty)'}\n\n"
        f"Question: {judge.options.question}\nAnswer Yes or No."
    )
    return [Message("system", SYSTEM), Message("user", body)]


def rubric_first(judge: Judge, request: str, answer: str) -> list[Message]:
    """The rubric (system text and question) first, the answer last."""
    cut = answer[: judge.options.max_answer_chars]
    rubric = f"{SYSTEM}\n\nQuestion: {judge.options.question}"
    body = (
        f"Request:\n{request.strip()}\n\nResponse:\n{cut.strip() or '(empty)'}\n\nAnswer Yes or No."
    )
    return [Message("system", rubric), Message("user", body)]


class Counted:
    """Records llama.cpp's own timings of every reply the generators' engines return
    (each engine once: a judge on the generator's model shares its engine)."""

    def __init__(self, *generators: LlamaCppGenerator) -> None:
        self.rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        engines = {id(g.engine): g.engine for g in generators}
        for engine in engines.values():
            engine.chat = self._counting(engine.chat)  # type: ignore[method-assign]

    def _counting(self, chat: Any) -> Any:
        def counted(body: dict[str, Any]) -> dict[str, Any]:
            reply: dict[str, Any] = chat(body)
            with self._lock:
                # A one-token request is a probe (a judge's verdict); the rest generate.
                probe = body.get("max_tokens") == 1
                self.rows.append({**(reply.get("timings") or {}), "probe": probe})
            return reply

        return counted

    def last(self) -> dict[str, Any]:
        with self._lock:
            return self.rows[-1]


async def probe(judge: Judge, counted: Counted, messages: list[Message]) -> tuple[float, int, int]:
    """P(yes), tokens evaluated, whole prompt tokens."""
    top = await judge.generator.next_token_logprobs(messages, judge.options.top_k)
    t = counted.last()
    evaluated = int(t.get("prompt_n", 0))
    return p_yes(top), evaluated, evaluated + int(t.get("cache_n", 0))


def credit(good: float, bad: float) -> float:
    return 1.0 if good > bad else 0.5 if good == bad else 0.0


async def run(data: str, limit: int | None) -> dict[str, Any]:
    pairs = load_pairs(data)[:limit]
    judge = Judge()
    judge.load()
    assert isinstance(judge.generator, LlamaCppGenerator), "this bench measures llama.cpp"
    counted = Counted(judge.generator)
    layouts = {
        "before": lambda r, a: question_last(judge, r, a),
        "after": lambda r, a: rubric_first(judge, r, a),
    }
    stats: dict[str, dict[str, list[float]]] = {
        k: {"credit": [], "first": [], "second": [], "whole": [], "seconds": []} for k in layouts
    }
    disagree: list[str] = []
    for i, pair in enumerate(pairs):
        order = list(layouts) if i % 2 == 0 else list(reversed(layouts))
        verdict: dict[str, float] = {}
        for name in order:
            started = time.perf_counter()
            good, ev1, whole1 = await probe(judge, counted, layouts[name](pair.prompt, pair.good))
            bad, ev2, whole2 = await probe(judge, counted, layouts[name](pair.prompt, pair.bad))
            s = stats[name]
            s["seconds"].append(time.perf_counter() - started)
            s["credit"].append(verdict.setdefault(name, credit(good, bad)))
            s["first"].append(ev1)
            s["second"].append(ev2)
            s["whole"] += [whole1, whole2]
        if verdict["before"] != verdict["after"]:
            disagree.append(f"{pair.id}: before {verdict['before']}, after {verdict['after']}")
        if (i + 1) % 8 == 0:
            sys.stderr.write(f"{i + 1}/{len(pairs)} pairs\n")
    now = judge.prompt("r", "a")
    current = [
        n
        for n, f in (("before", question_last), ("after", rubric_first))
        if f(judge, "r", "a") == now
    ]
    out: dict[str, Any] = {
        "pairs": len(pairs),
        "data": data,
        "layouts": {"before": "question_last", "after": "rubric_first"},
        "judge_prompt_uses": current[0] if current else "neither",
    }
    for name, s in stats.items():
        out[name] = {
            "accuracy": round(statistics.fmean(s["credit"]), 4),
            "evaluated_first_answer_mean": round(statistics.fmean(s["first"]), 1),
            "evaluated_second_answer_mean": round(statistics.fmean(s["second"]), 1),
            "whole_prompt_mean": round(statistics.fmean(s["whole"]), 1),
            "seconds_per_pair_median": round(statistics.median(s["seconds"]), 3),
        }
    b, a = out["before"], out["after"]
    out["accuracy_after_minus_before"] = round(a["accuracy"] - b["accuracy"], 4)
    out["evaluated_ratio_after_over_before"] = round(
        (a["evaluated_first_answer_mean"] + a["evaluated_second_answer_mean"])
        / (b["evaluated_first_answer_mean"] + b["evaluated_second_answer_mean"]),
        3,
    )
    out["disagreements"] = disagree
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="tests/data/pairs.jsonl")
    parser.add_argument("--limit", type=int)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.data, args.limit)), indent=2))


if __name__ == "__main__":
    main()
