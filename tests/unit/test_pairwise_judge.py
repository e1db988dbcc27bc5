from __future__ import annotations

import asyncio
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from aligntime import Aligner
from aligntime.errors import ConfigError
from aligntime.generators.base import Capabilities, Generator
from aligntime.policy.loader import load_policy
from aligntime.scorers.pairwise_judge import (
    PairwiseJudge,
    PairwiseJudgeOptions,
    p_first,
    schedule,
)
from aligntime.types import Candidate, Generation, GenerationParams, Message
from openai_stub_server import StubServer

REQUEST = [Message("user", "How do I boil an egg?")]


class BiasedJudgeModel(Generator):
    """A judge that prefers the response holding more "good" words, and also favours A.

    Its P(A) is sigmoid(quality(A) - quality(B) + bias): a position bias of
    ``bias`` logits on top of a real preference, so both can be checked apart.
    """

    capabilities = Capabilities(logprobs=True)

    def __init__(self, bias: float) -> None:
        self.bias = bias
        self.prompts: list[str] = []

    async def generate(
        self, messages: Sequence[Message], n: int, params: GenerationParams
    ) -> Generation:
        raise NotImplementedError

    async def next_token_logprobs(
        self, messages: Sequence[Message], top_k: int = 20
    ) -> dict[str, float]:
        text = messages[-1].content
        self.prompts.append(text)
        a = text.split("Response A:")[1].split("Response B:")[0]
        b = text.split("Response B:")[1].split("Question:")[0]
        logit = a.count("good") - b.count("good") + self.bias
        p_a = 1.0 / (1.0 + math.exp(-logit))
        return {" A": math.log(p_a), "B": math.log(1.0 - p_a), "The": -3.0}


def judge_with(model: Generator, **options: Any) -> PairwiseJudge:
    judge = PairwiseJudge(PairwiseJudgeOptions(backend="fake", model="fake", **options))
    judge.generator = model
    return judge


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_p_first_reads_capital_letters_only() -> None:
    top = {" A": math.log(0.3), "(A)": math.log(0.1), "B.": math.log(0.2), "a": -0.01}
    assert p_first(top) == pytest.approx(0.4 / 0.6)
    assert p_first({"The": -0.1, "a": -0.2}) == 0.5


def test_a_pure_position_bias_cancels_to_one_half() -> None:
    # The fake backend answers A with the same probability whatever the pair holds.
    judge = PairwiseJudge(PairwiseJudgeOptions(backend="fake", model="fake"), name="pairs")
    assert p_first(asyncio.run(judge.generator.next_token_logprobs(REQUEST))) > 0.5
    values = asyncio.run(judge.score(REQUEST, [Candidate("x"), Candidate("y"), Candidate("z")]))
    assert values == pytest.approx([0.5, 0.5, 0.5])


def test_both_orders_are_averaged_and_the_better_answer_wins() -> None:
    model = BiasedJudgeModel(bias=2.0)
    judge = judge_with(model)
    cands = [Candidate("good good"), Candidate("plain"), Candidate("good")]
    values = asyncio.run(judge.score(REQUEST, cands))
    # Every pair was asked in both orders: 3 pairs, 6 prompts.
    assert len(model.prompts) == 6

    def beats(qi: int, qj: int) -> float:
        return (sigmoid(qi - qj + 2.0) + 1.0 - sigmoid(qj - qi + 2.0)) / 2.0

    expected = [
        (beats(2, 0) + beats(2, 1)) / 2,
        (beats(0, 2) + beats(0, 1)) / 2,
        (beats(1, 2) + beats(1, 0)) / 2,
    ]
    assert values == pytest.approx(expected)
    assert values[0] > values[2] > values[1]
    assert sum(values) == pytest.approx(1.5)  # round robin: the scores sum to N / 2
    # Without the second order the bias would have pushed the first-listed answer up.
    assert all(0.0 <= v <= 1.0 for v in values)


def test_one_candidate_scores_one_half_and_none_scores_nothing() -> None:
    judge = judge_with(BiasedJudgeModel(bias=0.0))
    assert asyncio.run(judge.score(REQUEST, [Candidate("only")])) == [0.5]
    assert asyncio.run(judge.score(REQUEST, [])) == []


def test_schedule_is_every_pair_until_max_pairs_then_balanced() -> None:
    assert schedule(4, 28) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    pairs = schedule(20, 45)  # 190 pairs in all; k = 2 neighbours each side
    assert len(pairs) == 40 and len(set(pairs)) == 40
    games = [sum(i in p for p in pairs) for i in range(20)]
    assert games == [4] * 20


def test_large_n_uses_the_schedule() -> None:
    model = BiasedJudgeModel(bias=1.0)
    judge = judge_with(model, max_pairs=10)
    cands = [Candidate("good " * (i % 3)) for i in range(10)]
    values = asyncio.run(judge.score(REQUEST, cands))
    assert len(model.prompts) == 2 * len(schedule(10, 10)) == 20
    assert all(0.0 <= v <= 1.0 for v in values)
    assert values[2] > values[0]


def test_prompt_labels_and_cuts_answers() -> None:
    judge = judge_with(BiasedJudgeModel(bias=0.0), max_answer_chars=50)
    system, user = judge.prompt("Q?", "x" * 80, "")
    assert system.role == "system" and "A or B" in system.content
    assert "Response A:\n" + "x" * 50 + "\n" in user.content
    assert "Response B:\n(empty)" in user.content


def test_bad_configuration_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown generator backend 'llamacp'"):
        PairwiseJudge(PairwiseJudgeOptions(backend="llamacp"))
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: p\ngenerator: {backend: fake}\n"
        "scorers:\n  - {name: pj, kind: pairwise_judge, backend: fake, max_pair: 3}\n"
    )
    with pytest.raises(ConfigError, match="max_pair"):
        load_policy(path)


def test_pairwise_judge_in_a_policy_over_the_openai_backend(tmp_path: Path) -> None:
    server = StubServer().start()
    try:
        # The stub's judge model prefers the response that mentions simmering, in any position.
        def verdict(body: dict[str, Any]) -> dict[str, float]:
            text = str(body["messages"][-1]["content"])
            a = "simmer" in text.split("Response B:")[0]
            return {"A": math.log(0.7 if a else 0.4), "B": math.log(0.3 if a else 0.6)}

        server.logprobs_for = verdict
        policy = f"""
        name: pairs
        generator:
          backend: fake
          responses: ["Boil it.", "Simmer it for 7 minutes; then simmer down.", "Eggs."]
        n: 3
        scorers:
          - name: pj
            kind: pairwise_judge
            backend: openai
            model: judge-model
            backend_options: {{base_url: "{server.base_url}", backoff_s: 0.001}}
        """
        path = tmp_path / "pairs.yaml"
        path.write_text(textwrap.dedent(policy))
        al = Aligner.from_policy(path)
        res = al.align("How do I boil an egg?")
        assert res.best is not None and "Simmer" in res.candidates[res.best].text
        assert len(server.chat_requests()) == 6
        assert sum(c.scores["pj"] for c in res.candidates) == pytest.approx(1.5)
        al.close()
    finally:
        server.stop()
