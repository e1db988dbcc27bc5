"""Benchmark the embedded default on this machine; prints one JSON object.

Figures, all measured in this one run:

- ``decode``: aggregate generation throughput (completion tokens / wall seconds of
  ``Generator.generate``) at n = 1, at n = 5 as one batched request from one
  shared prompt, and for five n = 1 requests one after another (the naive way);
  ``speedup_n5_over_n1`` is the headline ratio (1.0 means no gain from batching).
- ``align``: one ``Aligner.align`` with the default policy (models already loaded),
  split into generate and score seconds, repeated and reported as medians.
- ``prefix`` (first, on the fresh engine): prompt tokens llama.cpp evaluated per
  ``align`` (generation and judge together, from each reply's ``timings.prompt_n``:
  tokens not found in a slot's cache) for the first request and the later ones,
  one at a time, then for a burst of 8 concurrent requests.
- ``load`` (``--load-clients C``, off by default): where a request's time goes under
  load, with the scorers batched across requests as the server batches them: C
  clients each aligning their next request as soon as the last is answered (n = 2,
  32 tokens), and per request llama.cpp's own figures split into generation and judge
  probes (prompt tokens evaluated and reused, decode tokens, the engine's milliseconds)
  and the seconds each scorer took (wall, overlapping).
- ``--compare-model NAME`` (e.g. ``smollm2-135m-instruct-q4_0``): the decode figures
  for the policy's model and NAME, measured in turn within each repeat, and the
  judge's pairwise accuracy on ``--pairs`` with each model as the judge, with a
  paired bootstrap 95% interval of the difference, and the seconds each judge took.

Usage: ``python bench/embedded.py [--repeats 3] [--max-tokens 256] [--compare-model NAME]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import time
from typing import Any

from aligntime import Aligner
from aligntime.evaluation.pairwise import load_pairs
from aligntime.generators.base import Generator
from aligntime.generators.llamacpp import LlamaCppGenerator
from aligntime.scorers.judge import Judge, JudgeOptions, p_yes
from aligntime.types import GenerationParams, Message
from judge_prefix import Counted, credit

PROMPTS = [
    "My child has a fever. What should I do?",
    "How do I make a simple budget for my household?",
    "What are good ways to fall asleep faster?",
]


async def _throughput(
    aligner: Aligner, n: int, max_tokens: int, seed: int, generator: Generator | None = None
) -> tuple[int, float]:
    messages = aligner.prompt.apply([Message("user", PROMPTS[seed % len(PROMPTS)])])
    params = GenerationParams(max_tokens=max_tokens, seed=seed)
    t0 = time.perf_counter()
    gen = await (generator or aligner.generator).generate(messages, n, params)
    return gen.usage.completion_tokens, time.perf_counter() - t0


def decode_figures(
    aligner: Aligner, repeats: int, max_tokens: int, generators: dict[str, Generator] | None = None
) -> dict[str, Any]:
    """Decode throughput per generator; with several, each repeat measures them in turn."""
    generators = generators or {"policy": aligner.generator}
    rows: dict[str, dict[str, list[float]]] = {
        g: {"n1": [], "n5": [], "sequential5": []} for g in generators
    }
    for r in range(repeats):
        for name, generator in generators.items():
            row = rows[name]
            toks, secs = asyncio.run(_throughput(aligner, 1, max_tokens, r, generator))
            row["n1"].append(toks / secs)
            toks, secs = asyncio.run(_throughput(aligner, 5, max_tokens, r, generator))
            row["n5"].append(toks / secs)
            total_toks, total_secs = 0, 0.0
            for i in range(5):
                toks, secs = asyncio.run(
                    _throughput(aligner, 1, max_tokens, 100 * r + i, generator)
                )
                total_toks += toks
                total_secs += secs
            row["sequential5"].append(total_toks / total_secs)
    out = {name: _decode_summary(row) for name, row in rows.items()}
    return out["policy"] if list(out) == ["policy"] else out


def _decode_summary(rows: dict[str, list[float]]) -> dict[str, Any]:
    med = {k: statistics.median(v) for k, v in rows.items()}
    return {
        "tokens_per_s_n1": round(med["n1"], 1),
        "tokens_per_s_n5": round(med["n5"], 1),
        "tokens_per_s_sequential5": round(med["sequential5"], 1),
        "speedup_n5_over_n1": round(med["n5"] / med["n1"], 3),
        "speedup_sequential5_over_n1": round(med["sequential5"] / med["n1"], 3),
    }


def align_figures(aligner: Aligner, repeats: int, max_tokens: int) -> dict[str, Any]:
    runs = [
        aligner.align(PROMPTS[i % len(PROMPTS)], 5, max_tokens=max_tokens, seed=i)
        for i in range(repeats)
    ]
    gen = statistics.median(r.timings.generate_s for r in runs)
    score = statistics.median(r.timings.score_s for r in runs)
    total = statistics.median(r.timings.total_s for r in runs)
    return {
        "generate_s": round(gen, 3),
        "score_s": round(score, 3),
        "total_s": round(total, 3),
        "score_over_generate": round(score / gen, 3),
        "completion_tokens": statistics.median(r.usage.completion_tokens for r in runs),
    }


BURST = [
    "How do I clean a cast-iron pan?",
    "What should I pack for a day hike?",
    "How can I stop procrastinating?",
    "What is a healthy breakfast?",
    "How do I write a cover letter?",
    "Why is the sky blue?",
    "How do I keep basil alive indoors?",
    "What are signs of dehydration?",
]


def llamacpp_generators(aligner: Aligner) -> list[LlamaCppGenerator]:
    """The policy's generator and every llama.cpp judge's (the judge has an engine of its
    own when it names another file, as the default's Q8_0 judge does)."""
    assert isinstance(aligner.generator, LlamaCppGenerator), "this section measures llama.cpp"
    found = [aligner.generator]
    for scorer in aligner.scorers:
        inner = getattr(scorer, "inner", scorer)  # a server BatchingScorer wraps its scorer
        generator = getattr(inner, "generator", None)
        if isinstance(generator, LlamaCppGenerator):
            found.append(generator)
    return found


def prefix_figures(aligner: Aligner, max_tokens: int) -> dict[str, Any]:
    """Prompt tokens llama.cpp evaluated per request: first, later ones, a concurrent burst."""
    counted = Counted(*llamacpp_generators(aligner))

    def evaluated_during(work: Any) -> tuple[int, int]:
        start = len(counted.rows)
        work()
        rows = counted.rows[start:]
        return sum(int(t.get("prompt_n", 0)) for t in rows), len(rows)

    sequential = []
    for i, prompt in enumerate([*PROMPTS, "How do I fix a squeaky door?"]):
        tokens, calls = evaluated_during(
            lambda p=prompt, i=i: aligner.align(p, 2, max_tokens=max_tokens, seed=i)
        )
        sequential.append({"evaluated": tokens, "engine_calls": calls})

    async def burst() -> None:
        await asyncio.gather(
            *(aligner.aalign(p, 2, max_tokens=max_tokens, seed=i) for i, p in enumerate(BURST))
        )

    burst_tokens, burst_calls = evaluated_during(lambda: aligner._background.run(burst()))
    first = sequential[0]["evaluated"]
    later = statistics.fmean(r["evaluated"] for r in sequential[1:])
    return {
        "n": 2,
        "max_tokens": max_tokens,
        "sequential": sequential,
        "later_over_first": round(later / first, 3) if first else None,
        "burst8_evaluated_per_request": round(burst_tokens / len(BURST), 1),
        "burst8_engine_calls": burst_calls,
    }


def load_figures(policy: str, clients: int, requests: int, max_tokens: int) -> dict[str, Any]:
    """C concurrent clients on one aligner whose scorers batch across requests."""
    from aligntime.server.batching import BatchingScorer

    base = Aligner.from_policy(policy)
    seconds: dict[str, float] = {}

    def timed(scorer: BatchingScorer) -> BatchingScorer:
        call = scorer.score_details

        async def score_details(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await call(*args, **kwargs)
            finally:
                seconds[scorer.name] = seconds.get(scorer.name, 0.0) + time.perf_counter() - t0

        scorer.score_details = score_details  # type: ignore[method-assign]
        return scorer

    scorers = [timed(BatchingScorer(s)) for s in base.scorers]
    aligner = Aligner(base.policy, generator=base.generator, scorers=scorers)
    aligner.load()
    counted = Counted(*llamacpp_generators(aligner))
    latencies: list[float] = []

    async def run() -> float:
        await aligner.aalign(BURST[0], 2, max_tokens=max_tokens, seed=0)  # warm-up
        counted.rows.clear()
        seconds.clear()
        issued = 0

        async def client(c: int) -> None:
            nonlocal issued
            while issued < requests:
                i = issued
                issued += 1
                t0 = time.perf_counter()
                prompt = f"{BURST[i % len(BURST)]} (client {c}, request {i})"
                await aligner.aalign(prompt, 2, max_tokens=max_tokens, seed=i)
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        return time.perf_counter() - t0

    wall = aligner._background.run(run())
    aligner.close()

    def per_request(rows: list[dict[str, Any]]) -> dict[str, Any]:
        total = {
            k: sum(float(r.get(k, 0)) for r in rows)
            for k in ("prompt_n", "cache_n", "predicted_n", "prompt_ms", "predicted_ms")
        }
        return {
            "engine_calls": round(len(rows) / requests, 2),
            "prompt_evaluated": round(total["prompt_n"] / requests, 1),
            "prompt_reused": round(total["cache_n"] / requests, 1),
            # llama.cpp's timings of an n-choice request count its first choice only.
            "decoded_first_choice": round(total["predicted_n"] / requests, 1),
            "engine_prompt_s": round(total["prompt_ms"] / 1000 / requests, 3),
            "engine_decode_s": round(total["predicted_ms"] / 1000 / requests, 3),
        }

    return {
        "clients": clients,
        "requests": requests,
        "threads": aligner.generator.engine.threads,
        "wall_s": round(wall, 2),
        "requests_per_s": round(requests / wall, 3),
        "latency_p50_s": round(statistics.median(latencies), 2),
        "per_request": {
            "generation": per_request([r for r in counted.rows if not r["probe"]]),
            "judge_probes": per_request([r for r in counted.rows if r["probe"]]),
            "scorer_wall_s": {k: round(v / requests, 3) for k, v in sorted(seconds.items())},
        },
    }


def pairs_figures(models: dict[str, str], path: str) -> dict[str, Any]:
    """The judge's pairwise accuracy with each model as the judge, pair by pair in turn."""
    judges = {name: Judge(JudgeOptions(model=model)) for name, model in models.items()}
    credits: dict[str, list[float]] = {name: [] for name in judges}
    seconds = dict.fromkeys(judges, 0.0)

    async def one(judge: Judge, prompt: str, answer: str) -> float:
        top = await judge.generator.next_token_logprobs(
            judge.prompt(prompt, answer), judge.options.top_k
        )
        return p_yes(top)

    async def run() -> None:
        for pair in load_pairs(path):
            for name, judge in judges.items():
                started = time.perf_counter()
                good = await one(judge, pair.prompt, pair.good)
                bad = await one(judge, pair.prompt, pair.bad)
                seconds[name] += time.perf_counter() - started
                credits[name].append(credit(good, bad))

    asyncio.run(run())
    out: dict[str, Any] = {
        name: round(statistics.fmean(values), 4) for name, values in credits.items()
    }
    a, b = (credits[name] for name in models)
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    rng = random.Random(0)
    boots = sorted(statistics.fmean(rng.choices(diffs, k=len(diffs))) for _ in range(2000))
    out["difference"] = round(statistics.fmean(diffs), 4)
    out["difference_ci95"] = [round(boots[49], 4), round(boots[1949], 4)]
    out["pairs"] = len(diffs)
    # Both judges probe each pair in turn, so the ratio of their seconds is fair on a
    # noisy machine (the first pair of each also loads its engine's caches).
    out["seconds"] = {name: round(value, 2) for name, value in seconds.items()}
    first, second = (seconds[name] for name in models)
    out["compare_over_policy_seconds"] = round(second / first, 3) if first else None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="default")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--compare-model", help="a second GGUF model for the decode figures")
    parser.add_argument("--pairs", default="tests/data/pairs.jsonl")
    parser.add_argument("--skip", default="", help="comma-separated sections to leave out")
    parser.add_argument(
        "--load-clients", type=int, default=0, help="run the load section with C clients"
    )
    parser.add_argument("--load-requests", type=int, default=16)
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    t0 = time.perf_counter()
    aligner = Aligner.from_policy(args.policy)
    aligner.load()
    load_s = time.perf_counter() - t0
    report: dict[str, Any] = {
        "machine": {"cpu_count": __import__("os").cpu_count(), "python": platform.python_version()},
        "policy": args.policy,
        "max_tokens": args.max_tokens,
        "repeats": args.repeats,
        "load_s": round(load_s, 3),
    }
    if "prefix" not in skip:
        report["prefix"] = prefix_figures(aligner, 32)
    generators: dict[str, Generator] = {"policy": aligner.generator}
    if args.compare_model:
        assert isinstance(aligner.generator, LlamaCppGenerator)
        options = aligner.generator.options.model_copy(update={"model": args.compare_model})
        generators[args.compare_model] = LlamaCppGenerator(options)
    for generator in generators.values():
        asyncio.run(_throughput(aligner, 1, 8, 0, generator))  # warm-up
    if "decode" not in skip:
        report["decode"] = decode_figures(aligner, args.repeats, args.max_tokens, generators)
    if "align" not in skip:
        report["align"] = align_figures(aligner, args.repeats, args.max_tokens)
    if args.load_clients:
        report["load"] = load_figures(
            args.policy, args.load_clients, args.load_requests, max_tokens=32
        )
    if args.compare_model and "pairs" not in skip:
        assert isinstance(aligner.generator, LlamaCppGenerator)
        models = {"policy": aligner.generator.options.model, "compare": args.compare_model}
        report["judge_pairs_accuracy"] = pairs_figures(models, args.pairs)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
