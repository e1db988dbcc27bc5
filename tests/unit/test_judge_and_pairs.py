from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from aligntime.errors import InputError
from aligntime.evaluation.pairwise import Pair, load_pairs, pairwise_accuracy
from aligntime.scorers.judge import Judge, JudgeOptions, p_yes
from aligntime.types import Candidate, Message


def test_p_yes_normalises_yes_against_no() -> None:
    top = {"Yes": math.log(0.3), " yes": math.log(0.1), "No": math.log(0.2), "The": -0.1}
    assert p_yes(top) == pytest.approx(0.4 / 0.6)
    assert p_yes({"Maybe": -0.1}) == 0.5


def test_judge_on_the_fake_backend_uses_logprobs() -> None:
    judge = Judge(JudgeOptions(backend="fake", model="fake"))
    values = asyncio.run(judge.score([Message("user", "q")], [Candidate("a"), Candidate("b")]))
    expected = math.exp(-0.7) / (math.exp(-0.7) + math.exp(-1.0))
    assert values == pytest.approx([expected, expected])
    prompt = judge.prompt("What is 2+2?", "4")
    assert prompt[0].role == "system" and "What is 2+2?" in prompt[1].content


def test_pairwise_accuracy_counts_ties_half() -> None:
    pairs = [
        Pair("a", "p", "good", "bad", "offtopic"),
        Pair("b", "p", "good", "bad", "toxic"),
        Pair("c", "p", "good", "bad", "toxic"),
    ]
    verdicts = iter([(0.9, 0.1), (0.5, 0.5), (0.2, 0.8)])

    def score(prompt: str, answers: list[str]) -> list[Candidate]:
        g, b = next(verdicts)
        return [Candidate(answers[0], score=g), Candidate(answers[1], score=b)]

    report = pairwise_accuracy(pairs, score)
    assert report.accuracy == pytest.approx(1.5 / 3)
    assert report.by_kind == {"offtopic": 1.0, "toxic": 0.25}
    assert report.mistakes == ["b", "c"]


def test_ineligible_good_answer_loses_even_with_higher_score() -> None:
    def score(prompt: str, answers: list[str]) -> list[Candidate]:
        return [Candidate(answers[0], score=0.9, passed=False), Candidate(answers[1], score=0.1)]

    report = pairwise_accuracy([Pair("a", "p", "g", "b", "unsafe")], score)
    assert report.accuracy == 0.0


def test_shipped_pairs_load(tmp_path: Path) -> None:
    pairs = load_pairs(Path(__file__).parents[1] / "data" / "pairs.jsonl")
    assert len(pairs) == 64 and len({p.id for p in pairs}) == 64
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x"}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl:1"):
        load_pairs(bad)
