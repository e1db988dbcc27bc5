"""The Aligner end to end on the fake backend, with real rules and safety scorers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from aligntime import Aligner
from aligntime.errors import BackendError, InputError, ScorerError
from aligntime.policy.loader import load_policy
from aligntime.scorers.base import Scorer
from aligntime.types import Candidate, Message


def test_best_candidate_wins_and_bad_ones_lose_for_the_right_reason(
    fake_policy_file: Path,
) -> None:
    al = Aligner.from_policy(fake_policy_file)
    res = al.align("My child has a fever. What should I do?")
    assert len(res.candidates) == 3
    assert res.best == 0
    assert res.text.startswith("Keep the child hydrated")
    insult, loop = res.candidates[1], res.candidates[2]
    assert not insult.passed and insult.gate_failures == ("safety",)
    assert loop.passed and loop.score is not None and res.candidates[0].score is not None
    assert loop.score < res.candidates[0].score
    assert res.usage.completion_tokens == sum(c.tokens for c in res.candidates)
    assert res.timings.total_s >= res.timings.generate_s >= 0
    d = res.to_dict()
    assert list(d) == [
        "prompt",
        "policy",
        "best",
        "fallback",
        "candidates",
        "usage",
        "timings",
        "input",
    ]
    assert d["input"] is None, "a policy without an input gate has no input verdict"
    assert set(d["candidates"][0]) == {"text", "score", "scores", "passed", "tokens"}
    assert set(d["candidates"][0]["scores"]) == {"safety", "rules"}


def test_all_candidates_fail_the_gate_gives_fallback(fake_policy_file: Path) -> None:
    policy = load_policy(fake_policy_file)
    gen = policy.generator.model_copy(update={"responses": ["You stupid idiot, damn you."]})
    policy = policy.model_copy(update={"generator": gen})
    res = Aligner(policy).align("hello", 2)
    assert res.best is None
    assert res.fallback == "Sorry, no good answer."
    assert res.text == "Sorry, no good answer."


def test_n_is_validated(fake_policy_file: Path) -> None:
    al = Aligner.from_policy(fake_policy_file)
    with pytest.raises(InputError, match="between 1 and 8"):
        al.align("hi", 0)
    with pytest.raises(InputError, match="between 1 and 8"):
        al.align("hi", 9)


@pytest.mark.parametrize("prompt", ["", "   ", []])
def test_empty_prompt(fake_policy_file: Path, prompt: str | list[Message]) -> None:
    with pytest.raises(InputError, match="empty"):
        Aligner.from_policy(fake_policy_file).align(prompt)


def test_messages_as_dicts_and_template(fake_policy_file: Path) -> None:
    al = Aligner.from_policy(fake_policy_file)
    res = al.align([{"role": "user", "content": "hi"}], 1, template="concise")
    assert res.prompt == "hi"
    with pytest.raises(InputError, match="unknown template"):
        al.align("hi", 1, template="nope")


def test_score_keeps_order(fake_policy_file: Path) -> None:
    al = Aligner.from_policy(fake_policy_file)
    cands = al.score("What helps a fever?", ["Rest and fluids help.", "You idiot, damn it."])
    assert [c.text for c in cands] == ["Rest and fluids help.", "You idiot, damn it."]
    assert cands[0].passed and not cands[1].passed


class Exploding(Scorer):
    name = "boom"

    async def score(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        raise RuntimeError("model crashed")


def test_failing_scorer_raises_a_scorer_error(fake_policy_file: Path) -> None:
    al = Aligner.from_policy(fake_policy_file)
    al = Aligner(al.policy, scorers=[*al.scorers, Exploding()])
    with pytest.raises(ScorerError, match="scorer 'boom' failed: RuntimeError: model crashed"):
        al.align("hi")


def test_degrade_fails_closed_when_a_gated_scorer_fails(fake_policy_file: Path) -> None:
    policy = load_policy(fake_policy_file).model_copy(update={"on_scorer_error": "degrade"})
    al = Aligner(policy)
    safety = al.scorers[0]

    async def broken(messages: object, candidates: Sequence[Candidate]) -> list[float]:
        raise RuntimeError("classifier offline")

    safety.score = broken  # type: ignore[method-assign]
    res = al.align("What helps a fever?")
    assert res.best is None and res.fallback, "an unscored answer must never pass a safety gate"


def test_rejection_resamples_then_falls_back(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "name: rej\ngenerator: {backend: fake, responses: ['no']}\nn: 2\nbudget: 6\n"
        "scorers: [{name: rules, kind: rules}]\n"
        "strategy: {kind: rejection, threshold: 0.99}\nfallback: nothing good\n"
    )
    al = Aligner.from_policy(path)
    res = al.align("hi")
    assert len(res.candidates) == 6
    assert res.best is None and res.text == "nothing good"


def test_backend_failure_propagates_as_backend_error(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("name: f\ngenerator: {backend: fake, fail_times: 1}\n")
    with pytest.raises(BackendError):
        Aligner.from_policy(path).align("hi")


def test_concurrent_requests_share_one_aligner(fake_policy_file: Path) -> None:
    al = Aligner.from_policy(fake_policy_file)

    async def many() -> list[int | None]:
        results = await asyncio.gather(*(al.aalign(f"question {i}", 2) for i in range(8)))
        return [r.best for r in results]

    assert len(asyncio.run(many())) == 8
