"""Labelled scores (ScoreDetail): gate failures and input refusals name the scorer's reasons.

Also the implicit ``empty`` gate and the library's own check of the sampling settings.
"""

from __future__ import annotations

import asyncio
import math
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from aligntime import Aligner
from aligntime.errors import InputError
from aligntime.policy.loader import parse_policy
from aligntime.scorers.base import Scorer
from aligntime.scorers.combine import Gate, ScorerWeighting, combine
from aligntime.server.batching import BatchingScorer
from aligntime.types import Candidate, Message, RequestAssessment, ScoreDetail
from openai_stub_server import StubServer

ASK = [Message("user", "How do I hurt someone?")]


class Categories(Scorer):
    """P(unsafe) 0.9 for an answer naming a weapon (labelled), 0.1 otherwise; a keyword guard.

    It reports details the way a guard model does: the violated categories as labels,
    for candidates and for the request.
    """

    direction = "lower"
    reports_details = True

    def __init__(self, name: str = "cats") -> None:
        self.name = name
        self.plain_calls = 0

    @staticmethod
    def _detail(text: str) -> ScoreDetail:
        if "knife" in text.lower() or "bomb" in text.lower():
            return ScoreDetail(0.9, ("S1 Violent Crimes", "S9 Indiscriminate Weapons"))
        return ScoreDetail(0.1)

    async def score(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        self.plain_calls += 1
        return [self._detail(c.text).value for c in candidates]

    async def score_details(
        self,
        messages: Sequence[Message],
        candidates: Sequence[Candidate],
        *,
        assessment: RequestAssessment | None = None,
    ) -> list[ScoreDetail]:
        return [self._detail(c.text) for c in candidates]

    async def score_request_details(self, messages: Sequence[Message]) -> ScoreDetail:
        return self._detail(" ".join(m.content for m in messages))


class Length(Scorer):
    """Prefers shorter answers: a value that does not label anything."""

    name = "length"

    async def score(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        return [1.0 / (1 + len(c.text)) for c in candidates]


class ReadsVerdict(Scorer):
    """Returns the request's harm estimate as its value (reads the assessment)."""

    name = "verdict"
    reads_assessment = True

    async def score(
        self,
        messages: Sequence[Message],
        candidates: Sequence[Candidate],
        assessment: RequestAssessment | None = None,
    ) -> list[float]:
        harm = assessment.harm if assessment is not None else None
        return [math.nan if harm is None else harm for _ in candidates]


def weighting(scorer: Scorer, gate: Gate | None = None, weight: float = 1.0) -> ScorerWeighting:
    return ScorerWeighting(scorer.name, weight, gate, scorer)


# --- the contract --------------------------------------------------------------------


def test_default_details_wrap_score_and_pass_the_assessment_only_where_read() -> None:
    cands = [Candidate("a"), Candidate("bb")]
    assert asyncio.run(Length().score_details(ASK, cands)) == [
        ScoreDetail(0.5),
        ScoreDetail(1 / 3),
    ]
    verdict = RequestAssessment(harm=0.7)
    assert (
        asyncio.run(ReadsVerdict().score_details(ASK, cands, assessment=verdict))
        == [ScoreDetail(0.7)] * 2
    )
    # Without a verdict, a reading scorer sees one with no harm estimate.
    [none] = asyncio.run(ReadsVerdict().score_details(ASK, cands[:1]))
    assert math.isnan(none.value) and none.labels == ()
    assert asyncio.run(Length().score_request_details(ASK)).labels == ()
    assert not Length.reports_details and Categories.reports_details


def test_combine_names_the_labels_of_a_failed_gate_only() -> None:
    cats, length = Categories(), Length()
    cands = [Candidate("Use a knife."), Candidate("Please talk to someone."), Candidate("Stab.")]
    out = combine(
        cands,
        {"cats": [0.9, 0.1, 0.8], "length": [0.5, 0.9, 0.2]},
        [weighting(cats, Gate(max=0.5)), weighting(length, Gate(min=0.3))],
        {"cats": [("S1 Violent Crimes", "S10 Hate"), ("S2 Non-Violent Crimes",), ()]},
    )
    assert out[0].gate_failures == ("cats (S1 Violent Crimes, S10 Hate)",)
    # A passing gate's labels are not failures; a failure without labels is the bare name.
    assert out[1].passed and out[1].gate_failures == ()
    assert out[2].gate_failures == ("cats", "length")
    with pytest.raises(ValueError, match="'cats' has 1 values for 3 candidates"):
        combine(cands, {}, [weighting(cats)], {"cats": [()]})


# --- the implicit empty gate ---------------------------------------------------------


def test_an_empty_or_blank_answer_fails_the_empty_gate() -> None:
    length = Length()
    cands = [Candidate(""), Candidate(" \n\t"), Candidate("Drink water.")]
    out = combine(cands, {"length": [1.0, 0.9, 0.1]}, [weighting(length)])
    assert [c.passed for c in out] == [False, False, True]
    assert out[0].gate_failures == ("empty",) and out[1].gate_failures == ("empty",)
    # Its score is kept for reports, as for any failed gate.
    assert out[0].score == pytest.approx(1.0)


POLICY = """
name: labelled
generator: {backend: fake, responses: ["RESPONSES"]}
n: 3
scorers:
  - {name: cats, kind: rules, weight: 0, gate: {max: 0.5}}
  - {name: length, kind: rules}
input:
  scorers:
    - {name: request-cats, kind: rules, harm: true, refuse: 0.8}
  refusal: "I can't help with that."
fallback: "No good answer."
"""


def aligner(responses: Sequence[str], **kwargs: Any) -> Aligner:
    quoted = '", "'.join(responses)
    policy = parse_policy(POLICY.replace('"RESPONSES"', f'"{quoted}"'), "labelled.yaml")
    return Aligner(
        policy,
        scorers=kwargs.pop("scorers", [Categories(), Length()]),
        input_scorers=[Categories("request-cats")],
        **kwargs,
    )


def test_best_of_n_never_chooses_an_empty_answer() -> None:
    # The length scorer would prefer the empty answers; the empty gate rules them out.
    with aligner(["", "   ", "Rest, fluids, and a doctor if it persists."]) as al:
        res = al.align("My child has a fever.")
    assert res.best == 2 and res.text.startswith("Rest")
    assert [c.gate_failures for c in res.candidates[:2]] == [("empty",), ("empty",)]
    with aligner(["", " "]) as al:
        res = al.align("My child has a fever.", n=2)
    assert res.best is None and res.text == "No good answer."


# --- through the aligner -------------------------------------------------------------


def test_aligner_gate_failures_name_the_labels() -> None:
    with aligner(["Use a knife.", "Talk to someone you trust."]) as al:
        res = al.align("I am angry at my neighbour.", n=2)
    assert res.best == 1
    assert res.candidates[0].gate_failures == (
        "cats (S1 Violent Crimes, S9 Indiscriminate Weapons)",
    )
    assert res.candidates[0].scores["cats"] == pytest.approx(0.9)
    assert res.input is not None and res.input.action == "pass" and res.input.labels == ()


def test_input_refusal_records_the_deciding_scorers_labels() -> None:
    with aligner(["anything"]) as al:
        res = al.align("How do I build a bomb?")
    assert res.refused and res.candidates == []
    assert res.input is not None and res.input.decided_by == "request-cats"
    assert res.input.labels == ("S1 Violent Crimes", "S9 Indiscriminate Weapons")
    assert res.to_dict()["input"]["labels"] == [
        "S1 Violent Crimes",
        "S9 Indiscriminate Weapons",
    ]


def test_the_server_batching_wrapper_forwards_the_labels() -> None:
    inner = Categories()
    wrapped = BatchingScorer(inner)
    assert wrapped.reports_details
    with aligner(["Use a knife.", "Talk to someone."], scorers=[wrapped, Length()]) as al:
        res = al.align("I am angry.", n=2)
    assert res.candidates[0].gate_failures == (
        "cats (S1 Violent Crimes, S9 Indiscriminate Weapons)",
    )
    assert inner.plain_calls == 0, "labelled scorers are called for their details, once"
    detail = asyncio.run(wrapped.score_request_details([Message("user", "a bomb")]))
    assert detail.labels == ("S1 Violent Crimes", "S9 Indiscriminate Weapons")
    # A wrapper around a plain scorer still batches values, with no labels.
    plain = BatchingScorer(Length())
    assert not plain.reports_details
    assert asyncio.run(plain.score_details(ASK, [Candidate("ab")])) == [ScoreDetail(1 / 3)]


# --- sampling settings ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": -0.1}, "temperature: Input should be greater than or equal to 0"),
        ({"temperature": math.nan}, "temperature must be a finite number, got nan"),
        ({"temperature": math.inf}, "temperature must be a finite number, got inf"),
        ({"top_p": 0.0}, "top_p: Input should be greater than 0"),
        ({"top_p": 1.5}, "top_p: Input should be less than or equal to 1"),
        ({"top_p": math.nan}, "top_p must be a finite number"),
    ],
)
def test_sampling_settings_are_validated(kwargs: dict[str, float], message: str) -> None:
    with aligner(["fine"]) as al, pytest.raises(InputError, match=message):
        al.align("hello", **kwargs)  # type: ignore[arg-type]


def test_valid_sampling_settings_pass() -> None:
    with aligner(["fine"]) as al:
        res = al.align("hello", n=1, temperature=0.0, top_p=1.0)
    assert res.text == "fine"


# --- a guard model, end to end -------------------------------------------------------

Steps = list[tuple[str, dict[str, float]]]


def lg_answer(p: float, codes: str = "S1") -> Steps:
    """What Llama Guard 3 writes: a blank line, the verdict, then the codes when unsafe."""
    verdict = "unsafe" if p >= 0.5 else "safe"
    steps: Steps = [
        ("\n\n", {"\n\n": -0.001}),
        (verdict, {"unsafe": math.log(p), "safe": math.log(1 - p)}),
    ]
    if verdict == "unsafe":
        steps.append(("\n", {"\n": -0.01}))
        steps += [(piece, {piece: -0.01}) for piece in codes.replace(",", " , ").split()]
    return steps


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubServer]:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    srv = StubServer().start()
    yield srv
    srv.stop()


def test_guard_categories_reach_gate_failures_and_the_input_verdict(
    server: StubServer, tmp_path: Path
) -> None:
    def answer(body: dict[str, Any]) -> Steps:
        prompt = body["prompt"]
        if "ONLY THE LAST User message" in prompt:  # the input gate
            return lg_answer(0.95, "S9") if "bomb" in prompt else lg_answer(0.05)
        return lg_answer(0.93, "S1,S10") if "Mix the powder" in prompt else lg_answer(0.02)

    server.completion_for = answer
    guard = f"""
        kind: guard
        format: llama-guard-3
        backend: openai
        model: guard-model
        backend_options: {{base_url: "{server.base_url}", max_retries: 1}}"""
    path = tmp_path / "guarded.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            name: guarded
            generator:
              backend: fake
              responses: ["Mix the powder with fuel.", "Please ask a pharmacist."]
            n: 2
            input:
              scorers:
                - name: input-guard
                  role: user
                  refuse: 0.5{textwrap.indent(guard, "          ")}
            scorers:
              - name: guard
                weight: 0
                gate: {{max: 0.5}}{textwrap.indent(guard, "        ")}
              - {{name: rules, kind: rules}}
            """
        )
    )
    with Aligner.from_policy(path) as al:
        refused = al.align("How do I build a bomb?")
        served = al.align("How do I dispose of old medication?")
    assert refused.input is not None and refused.input.decided_by == "input-guard"
    assert refused.input.labels == ("S9 Indiscriminate Weapons",)
    assert served.best == 1
    assert served.candidates[0].gate_failures == ("guard (S1 Violent Crimes, S10 Hate)",)
    assert served.candidates[1].gate_failures == ()
