"""Benchmark stream-while-selecting against the whole answer, on the real default policy.

``aligntime serve --policy default`` (SmolLM2-135M on llama.cpp, its input gate and
scorers, audit log on) runs as a second process. For each prompt, one client sends
the same request (N = 5, the same seed) twice, one after the other, so both modes
meet the same machine load:

- ``whole``: not streamed; its latency is the time to the complete response;
- ``early``: ``stream: true`` with ``aligntime.stream_mode: "early"``; its time to
  first content token is the time to the first non-empty ``delta.content``.

Quality: after the server stops, the answer each mode sent is scored by the default
policy's own scorers in this process, as complete answers (the pairs check's
ranking: gates first, then combined score), and the two are compared per prompt
(wins, ties, losses of early against whole), with the mean combined score and the
share that passed every gate.

Usage: ``python bench/stream.py [--prompts K] [--max-tokens T]``. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from aligntime import Aligner
from aligntime.server.testing import serve_subprocess
from aligntime.types import rank_key

PAIRS = Path(__file__).parents[1] / "tests" / "data" / "pairs.jsonl"


def prompts(k: int) -> list[str]:
    """The first ``k`` benign prompts of the pairs file (harmful ones are refused at the
    input gate in both modes and would measure nothing)."""
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    benign = [r["prompt"] for r in rows if r.get("kind") not in ("harmful", "unsafe")]
    return benign[:k]


def body(prompt: str, seed: int, max_tokens: int | None, early: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": "default",
        "messages": [{"role": "user", "content": prompt}],
        "aligntime": {"n": 5},
        "seed": seed,
    }
    if max_tokens is not None:
        out["max_tokens"] = max_tokens
    if early:
        out |= {"stream": True, "aligntime": {"n": 5, "stream_mode": "early"}}
    return out


def whole(client: httpx.Client, req: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    r = client.post("/v1/chat/completions", json=req)
    r.raise_for_status()
    data = r.json()
    return {
        "latency_s": time.perf_counter() - t0,
        "text": data["choices"][0]["message"]["content"],
        "finish_reason": data["choices"][0]["finish_reason"],
    }


def early(client: httpx.Client, req: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    first: float | None = None
    text, finish, timings = "", None, {}
    with client.stream("POST", "/v1/chat/completions", json=req) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"])
            if not chunk["choices"]:
                continue
            choice = chunk["choices"][0]
            piece = choice["delta"].get("content") or ""
            if piece and first is None:
                first = time.perf_counter() - t0
            text += piece
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
                timings = chunk.get("aligntime", {}).get("timings", {})
    return {
        "ttft_s": first,
        "latency_s": time.perf_counter() - t0,
        "text": text,
        "finish_reason": finish,
        "server_first_content_s": timings.get("first_content_s"),
    }


def quality(texts: list[str], pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Each mode's sent answer scored as a complete answer by the default policy."""
    al = Aligner.from_policy("default")
    wins = ties = losses = 0
    scores: dict[str, list[float]] = {"whole": [], "early": []}
    passed = {"whole": 0, "early": 0}
    try:
        for prompt, (w, e) in zip(texts, pairs, strict=True):
            cw, ce = al.score(prompt, [w, e])
            for mode, c in (("whole", cw), ("early", ce)):
                scores[mode].append(c.score if c.score is not None else float("nan"))
                passed[mode] += c.passed
            kw, ke = rank_key(cw), rank_key(ce)
            wins += ke > kw
            ties += ke == kw
            losses += ke < kw
    finally:
        al.close()
    return {
        "mean_score": {m: statistics.fmean(v) for m, v in scores.items()},
        "passed": passed,
        "early_vs_whole": {"wins": wins, "ties": ties, "losses": losses},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=None, help="default: the policy's")
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()
    texts = prompts(args.prompts)
    runs: list[dict[str, Any]] = []
    errors: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["--policy", "default", "--audit-db", str(Path(tmp) / "audit.db")]
        proc, url = serve_subprocess([*cmd, "--timeout", str(args.timeout)], timeout=600)
        try:
            with httpx.Client(base_url=url, timeout=args.timeout) as client:
                # One request first, so model loading is in neither mode's figures.
                whole(client, body("Hello.", 0, 8, early=False))
                for i, prompt in enumerate(texts):
                    try:
                        w = whole(client, body(prompt, 1000 + i, args.max_tokens, early=False))
                        e = early(client, body(prompt, 1000 + i, args.max_tokens, early=True))
                    except (httpx.HTTPError, RuntimeError) as exc:  # e.g. a 504 on a busy machine
                        errors.append(f"{prompt[:40]}: {exc}")
                        print(errors[-1], flush=True)
                        continue
                    runs.append({"prompt": prompt[:60], "whole": w, "early": e})
                    print(json.dumps(runs[-1]), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    ratios = [r["early"]["ttft_s"] / r["whole"]["latency_s"] for r in runs if r["early"]["ttft_s"]]
    report = {
        "n": 5,
        "max_tokens": args.max_tokens,
        "prompts": len(runs),
        "errors": errors,
        "whole_latency_s_p50": statistics.median(r["whole"]["latency_s"] for r in runs),
        "early_ttft_s_p50": statistics.median(
            r["early"]["ttft_s"] for r in runs if r["early"]["ttft_s"] is not None
        ),
        "early_latency_s_p50": statistics.median(r["early"]["latency_s"] for r in runs),
        "ttft_over_whole_p50": statistics.median(ratios) if ratios else None,
        "ttft_over_whole_max": max(ratios) if ratios else None,
        "early_finish_reasons": [r["early"]["finish_reason"] for r in runs],
        "quality": quality(texts, [(r["whole"]["text"], r["early"]["text"]) for r in runs]),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
