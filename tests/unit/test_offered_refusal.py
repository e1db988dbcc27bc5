"""A steered request's refusal offered as one more candidate (``steer.offer_refusal``).

On the fake backend, whose answers never refuse: the refusal joins the candidates only
for a steered request, is marked ``origin: refusal``, is scored like the others and
wins only where the scorers say so; the evaluation replay puts it in every subset.
"""

from __future__ import annotations

import asyncio

import pytest
from tests.unit.test_input_gate import KeywordHarm

from aligntime import Aligner
from aligntime.evaluation.replay import best_of_n_choice, simulate_choice, to_candidates
from aligntime.policy.loader import parse_policy
from aligntime.types import Candidate, RequestAssessment

POLICY = """
name: offered
generator:
  backend: fake
  responses: ["Sure, here is how you do it: step one, step two."]
n: 3
scorers:
  - {name: fit, kind: appropriate_refusal}
input:
  scorers:
    - {name: harm, kind: rules, harm: true, refuse: 0.9, steer: 0.3}
  steer: {principles: ["Decline if it could cause harm."], offer_refusal: true}
  refusal: "I'm sorry, but I can't help with that. Please ask a qualified professional."
fallback: "No good answer."
"""


def aligner(text: str = POLICY) -> Aligner:
    return Aligner(parse_policy(text, "offered.yaml"), input_scorers=[KeywordHarm()])


def test_a_steered_harmful_request_gets_the_refusal_as_a_candidate_and_it_wins() -> None:
    # KeywordHarm: 'weapon' -> 0.5, past steer (0.3), short of refuse (0.9).
    res = aligner().align("Which weapon is easiest to hide?")
    assert res.input is not None and res.input.action == "steer"
    origins = [c.origin for c in res.candidates]
    assert origins == ["sampled"] * 3 + ["refusal"]
    offered = res.candidates[-1]
    assert offered.text.startswith("I'm sorry") and offered.tokens == 0
    assert "fit" in offered.scores, "scored by the same scorers as the samples"
    assert res.to_dict()["candidates"][-1]["origin"] == "refusal"
    # appropriate_refusal with harm 0.5 rates a refusal and a compliant answer alike;
    # ties go to the earlier (sampled) candidate: the scorers, not the offer, decide.
    assert res.best == 0


def test_the_scorers_decide_a_harmful_estimate_makes_the_refusal_win() -> None:
    text = POLICY.replace("refuse: 0.9, steer: 0.3", "refuse: 0.99, steer: 0.3")
    res = aligner(text).align("How do I build a bomb?")  # 0.95: steered, not refused
    assert res.input is not None and res.input.action == "steer"
    assert res.best is not None and res.candidates[res.best].origin == "refusal"
    assert res.text.startswith("I'm sorry")


def test_a_request_below_the_steer_threshold_never_gets_it() -> None:
    res = aligner().align("How do I bake bread?")
    assert res.input is not None and res.input.action == "pass"
    assert [c.origin for c in res.candidates] == ["sampled"] * 3


def test_without_offer_refusal_a_steered_request_has_only_samples() -> None:
    res = aligner(POLICY.replace(", offer_refusal: true", "")).align("a weapon?")
    assert res.input is not None and res.input.action == "steer"
    assert all(c.origin == "sampled" for c in res.candidates)


def test_the_policy_fallback_is_offered_when_the_section_has_no_refusal_text() -> None:
    text = POLICY.replace(
        "  refusal: \"I'm sorry, but I can't help with that. Please ask a qualified "
        'professional."\n',
        "",
    )
    res = aligner(text).align("a weapon?")
    assert res.candidates[-1].origin == "refusal"
    assert res.candidates[-1].text == "No good answer."


def test_asample_records_the_offered_candidate_for_the_replay() -> None:
    al = aligner()
    res = asyncio.run(al.asample("a weapon?", 2))
    assert [c.origin for c in res.candidates] == ["sampled", "sampled", "refusal"]


def test_gate_offers_nothing_for_pass_refuse_or_no_verdict() -> None:
    gate = aligner().gate
    assert gate is not None
    assert gate.offered(None) == []
    for action in ("pass", "refuse"):
        assert gate.offered(RequestAssessment(action, {}, None, 0.5)) == []  # type: ignore[arg-type]
    (offered,) = gate.offered(RequestAssessment("steer", {}, "harm", 0.5))
    assert offered.origin == "refusal"


def _pool(scores: list[float], offered: float | None) -> list[Candidate]:
    pool = [Candidate(f"s{i}", tokens=10, score=s) for i, s in enumerate(scores)]
    if offered is not None:
        pool.append(Candidate("no", score=offered, origin="refusal"))
    return pool


def test_replay_puts_the_offered_candidate_in_every_subset() -> None:
    # Sampled 0.9, 0.5, 0.1 and an offered 0.6: at n=1 the offered one wins whenever the
    # drawn sample is below it (2 of 3 draws); at n=3 the best sample always beats it.
    pool = _pool([0.9, 0.5, 0.1], 0.6)
    one = best_of_n_choice(pool, 1)
    assert one.probs == pytest.approx({0: 1 / 3, 3: 2 / 3})
    assert one.used == 1 and one.used_tokens == 10
    every = best_of_n_choice(pool, 3).probs
    assert {i: p for i, p in every.items() if p} == pytest.approx({0: 1.0})
    # n counts samples only: a pool of 3 samples and an offer allows n=3, not 4.
    with pytest.raises(ValueError):
        best_of_n_choice(pool, 4)


def test_replay_without_offer_is_unchanged_and_a_failed_offer_is_no_choice() -> None:
    plain = best_of_n_choice(_pool([0.9, 0.5, 0.1], None), 1)
    assert plain.probs == pytest.approx({0: 1 / 3, 1: 1 / 3, 2: 1 / 3})
    pool = _pool([0.9, 0.5, 0.1], 0.95)
    pool[3] = Candidate("no", score=0.95, origin="refusal", passed=False)
    assert best_of_n_choice(pool, 1).probs == pytest.approx({0: 1 / 3, 1: 1 / 3, 2: 1 / 3})


def test_monte_carlo_replay_shows_the_offer_to_every_draw() -> None:
    pool = _pool([0.9, 0.5, 0.1], 0.6)
    options = {"beta": 0.001}  # soft best-of-n, as sharp as plain best-of-n
    choice = simulate_choice("soft_best_of_n", options, pool, 1, budget=1, draws=600, seed=1)
    assert choice.used == 1 and choice.used_tokens == 10
    # Each draw sees one sample and the offer: the offer wins unless the sample is 0.9.
    assert choice.probs.get(3, 0.0) == pytest.approx(2 / 3, abs=0.06)
    assert set(choice.probs) <= {0, 3}


def test_recorded_rows_keep_their_origin() -> None:
    (row,) = to_candidates([{"text": "x", "score": 0.5, "origin": "refusal"}])
    assert row.origin == "refusal"
    (old,) = to_candidates([{"text": "x", "score": 0.5}])
    assert old.origin == "sampled"
