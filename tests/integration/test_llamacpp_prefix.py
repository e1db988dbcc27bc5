"""Prefix reuse on the real engine: llama.cpp's own counts of prompt tokens evaluated."""

from __future__ import annotations

import asyncio

import pytest

from aligntime.generators.llamacpp import LlamaCppGenerator, LlamaCppOptions
from aligntime.generators.llamacpp_cache import PromptTokens, since
from aligntime.prompting.policy import PromptPolicy
from aligntime.scorers.judge import Judge, JudgeOptions
from aligntime.types import Candidate, GenerationParams, Message

pytestmark = pytest.mark.slow

PROMPT = PromptPolicy(
    system="You are a careful, helpful and harmless assistant. Answer the user's request "
    "directly and accurately in a few clear sentences. If you are not sure, say so.",
    principles=(
        "Stay on the user's topic and answer what was asked.",
        "Recommend professional help for medical, legal or safety emergencies.",
        "Refuse requests that would help someone cause harm, and say briefly why.",
    ),
)
QUESTIONS = ["Why is the sky blue?", "How do I boil an egg?", "What is rain?", "Name a fruit."]


def test_a_later_request_evaluates_only_what_follows_the_shared_prefix() -> None:
    # parallel=2 and a small context give this test an engine of its own, fresh.
    generator = LlamaCppGenerator(LlamaCppOptions(parallel=2, context=512, max_tokens=2))
    engine = generator.engine
    params = GenerationParams(max_tokens=2, seed=1)
    figures = []
    for question in QUESTIONS:
        before = engine.prompt_tokens.snapshot()
        asyncio.run(generator.generate(PROMPT.apply([Message("user", question)]), 2, params))
        figures.append(since(before, engine.prompt_tokens.snapshot()))
    first, *later = figures
    assert first.evaluated == first.prompt and first.requests == 1
    for request in later:
        assert request.evaluated <= 0.4 * first.evaluated, figures
        assert request.reused > 0


def test_the_judge_evaluates_only_the_answer_after_its_first_probe() -> None:
    judge = Judge(JudgeOptions(backend_options={"parallel": 2, "context": 512}))
    assert isinstance(judge.generator, LlamaCppGenerator)
    engine = judge.generator.engine
    answers = ["Boil it for seven minutes.", "Put it in hot water until it is done."]

    def probe(answer: str) -> PromptTokens:
        before = engine.prompt_tokens.snapshot()
        messages = judge.prompt("How do I boil an egg?", answer)
        asyncio.run(judge.generator.next_token_logprobs(messages))
        return since(before, engine.prompt_tokens.snapshot())

    first = probe(answers[0])
    second = probe(answers[1])
    # The rubric and the request, the start both probes share, are cached from the
    # first probe: the second reuses them and evaluates its answer and what follows it.
    assert first.evaluated == first.prompt
    assert second.reused >= 0.4 * second.prompt, (first, second)
    assert second.evaluated + second.reused == second.prompt, (first, second)


def test_one_judge_prompt_may_use_the_whole_shared_cache() -> None:
    # The presets give the judge 8 x 1024 cells of one unified KV cache, sized for the
    # usual judge prompt; a longer one (Chinese takes more than one SmolLM2 token per
    # character: 680 characters here) must still fit, in cells the other slots leave free.
    judge = Judge(JudgeOptions(backend_options={"parallel": 2, "context": 1024}))
    assert isinstance(judge.generator, LlamaCppGenerator)
    engine = judge.generator.engine
    before = engine.prompt_tokens.snapshot()
    request = "请详细解释一下为什么天空是蓝色的。" * 40
    messages = [Message("user", request)]
    (value,) = asyncio.run(judge.score(messages, [Candidate(text="因为瑞利散射。")]))
    used = since(before, engine.prompt_tokens.snapshot())
    assert 1024 < used.prompt <= 2048, used
    assert 0.0 <= value <= 1.0
