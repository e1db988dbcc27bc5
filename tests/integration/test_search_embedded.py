"""Search strategies on the real embedded model: llama.cpp continues partial answers."""

from __future__ import annotations

import asyncio

import pytest

from aligntime import Aligner
from aligntime.generators.llamacpp import LlamaCppGenerator
from aligntime.policy.loader import load_policy
from aligntime.strategies.base import REJECTED
from aligntime.types import GenerationParams, Message

pytestmark = pytest.mark.slow

TEA = "How do I make a cup of green tea?"


def _aligner(kind: str, **options: object) -> Aligner:
    policy = load_policy("default")
    strategy = type(policy.strategy).model_validate({"kind": kind, **options})
    return Aligner(policy.model_copy(update={"strategy": strategy}))


def test_llamacpp_extends_a_prefix_with_new_tokens_only() -> None:
    gen = LlamaCppGenerator()
    messages = [Message("user", "Name three fruits.")]
    prefix = "Here are three fruits: apple,"
    out = asyncio.run(gen.extend(messages, [prefix, prefix], 6, GenerationParams(seed=3)))
    assert len(out.candidates) == 2
    for c in out.candidates:
        assert 0 < c.tokens <= 6
        assert not c.text.startswith(prefix)  # the echoed prefill is cut off
        assert c.logprob is not None and c.logprob <= 0.0
    assert out.usage.completion_tokens == sum(c.tokens for c in out.candidates)


def test_early_rejection_on_the_embedded_model() -> None:
    al = _aligner("early_rejection", chunk_tokens=8, keep=0.5)
    res = al.align(TEA, 4, max_tokens=40, seed=5)
    rejected = [c for c in res.candidates if c.state == REJECTED]
    complete = [c for c in res.candidates if c.state != REJECTED]
    assert rejected and complete
    assert all(c.tokens % 8 == 0 for c in rejected)  # dropped at a check, every 8 tokens
    assert res.best is not None and res.candidates[res.best] in complete
    # Four candidates of up to 40 tokens would cost up to 160; pruning spends less.
    assert res.usage.completion_tokens < 4 * 40
    assert res.usage.completion_tokens == sum(c.tokens for c in res.candidates)


def test_guided_blockwise_on_the_embedded_model() -> None:
    al = _aligner("guided", block_tokens=12, top_k=2)
    res = al.align(TEA, max_tokens=36, seed=5)
    assert len(res.candidates) == 1
    chosen = res.candidates[0]
    assert chosen.text.strip() and 0 < chosen.tokens <= 36
    assert set(chosen.scores) == {"safety", "rules", "relevance", "judge", "reward", "fit"}


def test_guided_token_level_on_the_embedded_model() -> None:
    al = _aligner("guided", block_tokens=1, top_k=3)
    res = al.align(TEA, max_tokens=6)
    assert res.candidates[0].text.strip()
    assert res.candidates[0].tokens <= 6
