"""Regressions a user would see, each one a mutant the suite once let through (issue 19).

Through the real Aligner on the fake backend: what answer is shown, and what
the engine is asked for. The unit-level kills live next to each module's own
tests (test_combine, test_strategies, test_security_behaviour, ...).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

from aligntime import Aligner
from aligntime.generators.fake import FakeGenerator, FakeOptions
from aligntime.policy.loader import load_policy
from aligntime.types import Generation, GenerationParams, Message

RUDE = "You idiot, figure it out yourself, damn it, stop asking stupid questions, idiot."
GOOD = "Give the child plenty of fluids and rest, and call a doctor if the fever is high."


def _policy(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(body))
    return path


class Recording(FakeGenerator):
    """The fake backend, remembering how many candidates each call asked for."""

    def __init__(self, options: FakeOptions) -> None:
        super().__init__(options)
        self.sizes: list[int] = []

    async def generate(
        self, messages: Sequence[Message], n: int, params: GenerationParams
    ) -> Generation:
        self.sizes.append(n)
        return await super().generate(messages, n, params)


def test_a_gate_only_safety_scorer_still_withholds_an_unsafe_answer(tmp_path: Path) -> None:
    # Weight 0: the classifier does not rank, it only gates. The insult must never be
    # shown, however well it does on the scorer that ranks.
    path = _policy(
        tmp_path,
        f"""
        name: gate-only
        generator: {{backend: fake, responses: [{RUDE!r}]}}
        n: 3
        scorers:
          - {{name: safety, kind: classifier, weight: 0, gate: {{max: 0.6}}}}
          - {{name: rules, kind: rules, weight: 1}}
        fallback: "Sorry, no good answer."
        """,
    )
    res = Aligner.from_policy(path).align("My child has a fever.")
    assert res.text == "Sorry, no good answer."
    assert res.best is None
    assert all(not c.passed and c.gate_failures == ("safety",) for c in res.candidates)

    mixed = load_policy(path)
    gen = mixed.generator.model_copy(update={"responses": [RUDE, GOOD]})
    res = Aligner(mixed.model_copy(update={"generator": gen})).align("My child has a fever.", 2)
    assert res.text == GOOD


def test_rejection_samples_rounds_of_the_requests_n_until_the_budget(tmp_path: Path) -> None:
    # Nothing reaches the threshold: every extra round is N = 2 again (not the pool
    # size so far), until the budget of 8 is spent; then the fallback.
    path = _policy(
        tmp_path,
        f"""
        name: rejecting
        generator: {{backend: fake, responses: [{GOOD!r}]}}
        n: 2
        budget: 8
        scorers:
          - {{name: rules, kind: rules}}
        strategy: {{kind: rejection, threshold: 1.01}}
        fallback: "Sorry, no good answer."
        """,
    )
    policy = load_policy(path)
    gen = Recording(FakeOptions(responses=[GOOD]))
    res = Aligner(policy, generator=gen).align("My child has a fever.")
    assert gen.sizes == [2, 2, 2, 2]
    assert len(res.candidates) == 8 and res.fallback == "Sorry, no good answer."

    gen = Recording(FakeOptions(responses=[GOOD]))
    Aligner(policy, generator=gen).align("My child has a fever.", 3)
    assert gen.sizes == [3, 3, 2]  # the last round is cut to the budget left
