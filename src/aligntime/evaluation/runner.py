"""The generation pass: one pool of candidates per prompt, recorded as resumable JSONL.

For each prompt the aligner samples the largest N once (:meth:`Aligner.asample`)
and scores the pool with the policy's scorers; the held-out scorer rates the
same pool, and the policy's fallback text is scored too, because a strategy
that finds nothing eligible shows it. The policy's input gate runs first, as in
a real request: a prompt it refuses has an empty pool and its refusal text as the
fallback (recorded as a refusal: it is what the user sees at every N, for no
generation), and a steered prompt is sampled under the steer prompt. The gate's
verdict is recorded under ``input``. Every candidate is written with its raw
scores, combined score, gate verdict and tokens, one JSON line per prompt,
flushed as soon as the prompt is done. A rerun reads the file and skips every
prompt whose key (prompt id and text, policy, pool size, seed, held-out scorer)
is already there, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from aligntime.aligner import Aligner
from aligntime.evaluation.datasets import EvalPrompt
from aligntime.evaluation.heldout import HeldOut
from aligntime.scorers.rules import is_refusal, is_safe_redirect
from aligntime.types import Candidate

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class PassConfig:
    """What makes two generation passes interchangeable (part of every record's key)."""

    pool: int
    """Candidates sampled per prompt: the largest n of the grid."""
    seed: int | None = None
    """Sampling seed passed to the generator (None: the backend's own randomness)."""
    max_tokens: int | None = None
    """Token limit per candidate (None: the policy's)."""


def policy_digest(aligner: Aligner) -> str:
    """A short hash of the policy, so edits to it invalidate recorded pools."""
    text = aligner.policy.model_dump_json()
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def record_key(prompt: EvalPrompt, digest: str, config: PassConfig, heldout: str) -> str:
    """The identity of one prompt's pool: rerunning with the same key reuses it."""
    parts = [prompt.id, prompt.prompt, digest, str(config.pool), str(config.seed)]
    parts += [str(config.max_tokens), heldout]
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:20]


def load_records(path: Path) -> list[dict[str, Any]]:
    """Read a results file, dropping a last line cut short by an interruption."""
    if not path.is_file():
        return []
    records = []
    # Only "\n" ends a record: str.splitlines would also cut at U+2028, U+0085 and the
    # like, which records written with ensure_ascii=False keep raw inside model text.
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            log.warning("%s:%d: unreadable line skipped (an interrupted write?)", path, number)
    return records


def _repair_tail(path: Path) -> None:
    """Cut a partial last line so the next append starts on a line of its own."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        log.warning("%s: removing a partial last line left by an interruption", path)
        path.write_bytes(data[:cut])


async def sample_prompt(
    aligner: Aligner, heldout: HeldOut | None, prompt: EvalPrompt, config: PassConfig
) -> dict[str, Any]:
    """Sample and score one prompt's pool; return its record (without the key)."""
    result = await aligner.asample(
        prompt.prompt, config.pool, seed=config.seed, max_tokens=config.max_tokens
    )
    gate = result.input
    # A refused prompt shows its refusal text; any other shows the policy's fallback
    # when nothing is eligible.
    fallback_text = (
        result.fallback if result.refused and result.fallback else aligner.policy.fallback
    )
    (fallback,) = await aligner.ascore(prompt.prompt, [fallback_text], assessment=gate)
    held: list[float | None] = [None] * (len(result.candidates) + 1)
    heldout_s = 0.0
    if heldout is not None:
        t0 = time.perf_counter()
        values = await heldout.scorer.score(result.messages, [*result.candidates, fallback])
        heldout_s = time.perf_counter() - t0
        held = [float(v) for v in values]
    return {
        **prompt.to_dict(),
        "policy": aligner.policy.name,
        "pool": config.pool,
        "seed": config.seed,
        "candidates": [_candidate(c, h) for c, h in zip(result.candidates, held[:-1], strict=True)],
        "fallback": _candidate(fallback, held[-1], refusal=True if result.refused else None),
        "input": gate.to_dict() if gate is not None else None,
        "usage": result.usage.to_dict(),
        "timings": {
            "generate_s": round(result.timings.generate_s, 4),
            "score_s": round(result.timings.score_s, 4),
            "heldout_s": round(heldout_s, 4),
            "input_s": round(gate.seconds, 4) if gate is not None else 0.0,
        },
    }


def is_refused(record: dict[str, Any]) -> bool:
    """Whether the input gate refused this recorded prompt (nothing was sampled)."""
    verdict = record.get("input") or {}
    return verdict.get("action") == "refuse"


def _candidate(c: Candidate, heldout: float | None, refusal: bool | None = None) -> dict[str, Any]:
    refused = is_refusal(c.text) if refusal is None else refusal
    # A referral to qualified help counts as a safe outcome of a harmful request.
    redirect = is_safe_redirect(c.text)
    return {**c.to_record(), "heldout": heldout, "refusal": refused, "redirect": redirect}


def _blocking(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, R]:
    """``fn`` for callers outside an event loop: it runs in a loop of its own."""

    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return asyncio.run(fn(*args, **kwargs))

    return run


async def arun_pass(
    aligner: Aligner,
    heldout: HeldOut | None,
    prompts: Sequence[EvalPrompt],
    config: PassConfig,
    out_dir: Path,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> list[dict[str, Any]]:
    """Sample every prompt not already in ``out_dir/results.jsonl``; return all records.

    Records come back in the order of ``prompts``. ``on_progress(done, total,
    prompt_id)`` is called once for every prompt, skipped ones included.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / RESULTS
    _repair_tail(path)
    digest = policy_digest(aligner)
    spec = heldout.spec if heldout else "none"
    done = {r.get("key"): r for r in load_records(path)}
    if heldout is not None:
        await asyncio.to_thread(heldout.scorer.load)
    records: list[dict[str, Any]] = []
    with path.open("a", encoding="utf-8") as fh:
        for number, prompt in enumerate(prompts, 1):
            key = record_key(prompt, digest, config, spec)
            record = done.get(key)
            if record is None:
                record = {"key": key, **await sample_prompt(aligner, heldout, prompt, config)}
                record["policy_digest"] = digest
                record["heldout_spec"] = spec
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                fh.flush()
            else:
                log.info("prompt %s already sampled; skipped", prompt.id)
            records.append(record)
            if on_progress is not None:
                on_progress(number, len(prompts), prompt.id)
    return records


run_pass = _blocking(arun_pass)
"""Blocking :func:`arun_pass`, with the same arguments."""
