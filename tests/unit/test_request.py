"""One request object: built by every client, checked once against the policy."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from aligntime.aligner import Aligner
from aligntime.generators.fake import FakeGenerator
from aligntime.policy.loader import load_policy
from aligntime.request import AlignRequest, RequestError, reseeded, to_messages
from aligntime.server.protocol import ChatCompletionRequest
from aligntime.strategies.context import SearchContext
from aligntime.strategies.rejection import Rejection
from aligntime.types import Candidate, Generation, GenerationParams, Message


def test_the_server_request_converts_itself() -> None:
    body = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
            ],
            "n": 2,
            "max_tokens": 50,
            "max_completion_tokens": 40,
            "temperature": 0.3,
            "top_p": 0.9,
            "seed": 7,
            "stop": "END",
            "aligntime": {"n": 3, "template": "concise"},
        }
    )
    request = body.to_align_request()
    assert request.messages == [Message("system", "Be brief."), Message("user", "a\nb")]
    assert (request.n, request.template) == (3, "concise")  # aligntime.n wins over n
    assert request.params == GenerationParams(40, 0.3, 0.9, 7, ("END",))  # the smaller limit
    plain = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": ["x", "y"]}
    ).to_align_request()
    assert (plain.n, plain.template, plain.params) == (
        None,
        None,
        GenerationParams(stop=("x", "y")),
    )


def test_checked_resolves_n_and_names_the_field_it_refuses(fake_policy_file: Path) -> None:
    policy = load_policy(fake_policy_file)  # n 3, max_n 8, one template: concise
    hi = [Message("user", "hi")]
    assert AlignRequest(hi).checked(policy).n == 3
    cases = [
        (AlignRequest([Message("user", " ")]), "messages", "the prompt is empty"),
        (AlignRequest(hi, 9), "n", "n must be between 1 and 8"),
        (AlignRequest(hi, 0), "n", "n must be between 1 and 8"),
        (AlignRequest(hi, params=GenerationParams(max_tokens=0)), "max_tokens", "at least 1"),
        (
            AlignRequest(hi, params=GenerationParams(temperature=float("nan"))),
            "temperature",
            "finite",
        ),
        (AlignRequest(hi, params=GenerationParams(top_p=0.0)), "top_p", "greater than 0"),
        (AlignRequest(hi, template="long"), "template", "unknown template 'long'"),
    ]
    for request, field, fragment in cases:
        with pytest.raises(RequestError, match=fragment) as info:
            request.checked(policy)
        assert info.value.field == field


def test_the_keyword_api_and_the_request_give_the_same_answer(fake_policy_file: Path) -> None:
    with Aligner.from_policy(fake_policy_file) as al:
        # n = 3, the fake backend's three answers: both calls see them in the same order.
        by_keywords = al.align("My child has a fever.", 3, max_tokens=12, seed=3)
        params = GenerationParams(max_tokens=12, seed=3)
        request = AlignRequest(to_messages("My child has a fever."), 3, params=params)
        by_request = al.align_request(request)
    assert [c.text for c in by_keywords.candidates] == [c.text for c in by_request.candidates]
    assert by_keywords.best == by_request.best and by_keywords.usage == by_request.usage


def test_a_fixed_seed_moves_on_with_every_round() -> None:
    assert reseeded(GenerationParams(seed=None), 4).seed is None
    moved = reseeded(GenerationParams(max_tokens=9, seed=1), 4)
    assert moved.seed != 1 and moved.max_tokens == 9


class _SeedLog(FakeGenerator):
    """The fake backend, noting the seed of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.seeds: list[int | None] = []

    async def generate(
        self, messages: Sequence[Message], n: int, params: GenerationParams
    ) -> Generation:
        self.seeds.append(params.seed)
        return await super().generate(messages, n, params)


async def _unchanged(candidates: list[Candidate]) -> list[Candidate]:
    return [replace(c, score=0.0) for c in candidates]


def test_each_round_is_seeded_from_the_candidates_so_far() -> None:
    # Nothing reaches the threshold: three rounds of N = 2 within a budget of 6.
    gen = _SeedLog()
    hi = [Message("user", "hi")]
    ctx = SearchContext(
        generator=gen,
        prompt_messages=hi,
        request=AlignRequest(hi, 2, params=GenerationParams(seed=10)),
        max_tokens=5,
        scorer=_unchanged,
        budget=6,
    )
    decision = asyncio.run(Rejection(Rejection.Options(threshold=0.9)).run(ctx))
    assert decision.best is None and ctx.sampled == 6
    assert gen.seeds == [10, 12, 14]  # candidate k of the request has seed 10 + k
