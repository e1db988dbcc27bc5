"""Prefix reuse on the real engine: llama.cpp's own counts of prompt tokens evaluated."""

from __future__ import annotations

import asyncio

import pytest

from aligntime.generators.llamacpp import LlamaCppGenerator, LlamaCppOptions
from aligntime.generators.llamacpp_cache import PromptTokens, since
from aligntime.prompting.policy import PromptPolicy
from aligntime.scorers.judge import Judge, JudgeOptions
from aligntime.types import GenerationParams, Message

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
