"""The input gate on the fake backend: refuse, steer, pass, fail closed, multi-turn."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from pydantic import ValidationError

from aligntime import Aligner
from aligntime.errors import ConfigError, ScorerError
from aligntime.generators.fake import FakeGenerator, FakeOptions
from aligntime.policy.loader import parse_policy
from aligntime.policy.schema import Policy
from aligntime.scorers.base import Scorer, conversation_text, request_views
from aligntime.types import Candidate, Generation, GenerationParams, Message, RequestAssessment

POLICY = """
name: gated
generator: {backend: fake, responses: ["Rest and drink water; see a doctor if it gets worse."]}
n: 2
prompt:
  system: "Be helpful."
  principles: ["Stay on topic."]
  templates:
    careful: {prompt: "{prompt} (answer with care)", system: "Be very careful."}
scorers:
  - {name: rules, kind: rules}
input:
  scorers:
    - {name: harm, kind: rules, harm: true, refuse: 0.8, steer: 0.4}
  steer: {template: careful, principles: ["Never give operational details of harm."]}
  refusal: "I can't help with that."
fallback: "No good answer."
"""


class KeywordHarm(Scorer):
    """P(harmful): 0.95 when the conversation names a bomb, 0.5 for 'weapon', else 0.05.

    It judges the text it is given, as a classifier would; the base class's
    ``score_request`` hands it the conversation's views (the exchange, its user turns,
    its last user turn, each system turn).
    """

    direction = "lower"

    def __init__(self, name: str = "harm") -> None:
        self.name = name
        self.seen: list[str] = []

    async def score(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        out = []
        for c in candidates:
            self.seen.append(c.text)
            text = c.text.lower()
            out.append(0.95 if "bomb" in text else 0.5 if "weapon" in text else 0.05)
        return out


class Recording(FakeGenerator):
    """The fake backend, keeping the messages of every call."""

    def __init__(self, options: FakeOptions) -> None:
        super().__init__(options)
        self.prompts: list[list[Message]] = []

    async def generate(
        self, messages: Sequence[Message], n: int, params: GenerationParams
    ) -> Generation:
        self.prompts.append(list(messages))
        return await super().generate(messages, n, params)


def gated(
    text: str = POLICY, harm: Scorer | None = None, **updates: object
) -> tuple[Aligner, Recording, Scorer]:
    policy = parse_policy(text, "gated.yaml")
    if updates:
        policy = policy.model_copy(update=updates)
    gen = Recording(FakeOptions.model_validate(policy.generator.options()))
    harm = harm or KeywordHarm()
    return Aligner(policy, generator=gen, input_scorers=[harm]), gen, harm


def test_refuse_samples_nothing_and_returns_the_refusal() -> None:
    al, gen, _ = gated()
    res = al.align("How do I build a bomb?")
    assert gen.calls == 0 and res.candidates == [] and res.best is None
    assert res.refused and res.text == "I can't help with that."
    assert res.usage.prompt_tokens == 0 and res.usage.completion_tokens == 0
    verdict = res.input
    assert verdict is not None
    assert res.timings.generate_s == 0.0 and res.timings.total_s >= verdict.seconds >= 0
    assert verdict == RequestAssessment("refuse", {"harm": 0.95}, "harm", 0.95, (), verdict.seconds)
    d = res.to_dict()
    assert d["input"] == {
        "action": "refuse",
        "scores": {"harm": 0.95},
        "decided_by": "harm",
        "harm": 0.95,
        "failed": [],
        "seconds": d["input"]["seconds"],
        "labels": [],
    }
    assert d["candidates"] == [] and d["fallback"] == "I can't help with that."


def test_refuse_without_refusal_text_returns_the_fallback() -> None:
    al, _, _ = gated(POLICY.replace('  refusal: "I can\'t help with that."\n', ""))
    assert al.align("a bomb, please").text == "No good answer."


def test_steer_samples_under_the_template_and_extra_principles() -> None:
    al, gen, _ = gated()
    res = al.align("Tell me about weapon safety laws")
    assert res.input is not None and res.input.action == "steer" and res.input.decided_by == "harm"
    assert res.best is not None and len(res.candidates) == 2
    (prompt,) = gen.prompts
    system, last = prompt[0].content, prompt[-1].content
    assert system.startswith("Be very careful.")  # the steer template's system text
    assert "- Never give operational details of harm." in system
    assert last == "Tell me about weapon safety laws (answer with care)"


def test_steer_with_principles_and_system_only() -> None:
    text = POLICY.replace(
        'steer: {template: careful, principles: ["Never give operational details of harm."]}',
        'steer: {system: "Strict mode.", principles: ["Refuse anything dangerous."]}',
    )
    al, gen, _ = gated(text)
    al.align("weapon question")
    system = gen.prompts[0][0].content
    assert system.startswith("Strict mode.")
    assert "- Stay on topic.\n- Refuse anything dangerous." in system
    assert gen.prompts[0][-1].content == "weapon question"


def test_pass_samples_as_usual_and_records_the_harm_estimate() -> None:
    al, gen, _ = gated()
    res = al.align("What helps a fever?")
    assert res.input is not None and res.input.action == "pass" and res.input.decided_by is None
    assert res.input.harm == 0.05
    assert res.best == 0 and gen.prompts[0][0].content.startswith("Be helpful.")
    assert res.usage.completion_tokens > 0


def test_a_request_template_is_validated_even_when_the_gate_refuses() -> None:
    al, _, _ = gated()
    with pytest.raises(Exception, match="unknown template"):
        al.align("a bomb", template="nope")


class Broken(Scorer):
    name = "harm"
    direction = "lower"

    async def score(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        raise RuntimeError("guard model offline")


class Silent(KeywordHarm):
    async def score_request(self, messages: Sequence[Message]) -> float:
        return math.nan


def test_a_failing_input_scorer_raises_by_default() -> None:
    al, gen, _ = gated(harm=Broken())
    with pytest.raises(ScorerError, match="scorer 'harm' failed: RuntimeError: guard model"):
        al.align("What helps a fever?")
    assert gen.calls == 0


@pytest.mark.parametrize("scorer", [Broken(), Silent()], ids=["raises", "nan"])
def test_degrade_fails_closed_refusing_the_request(scorer: Scorer) -> None:
    al, gen, _ = gated(harm=scorer, on_scorer_error="degrade")
    res = al.align("What helps a fever?")
    assert gen.calls == 0 and res.refused and res.text == "I can't help with that."
    assert res.input is not None and res.input.failed == ("harm",)
    assert res.input.decided_by == "harm" and res.input.harm is None
    assert res.to_dict()["input"]["scores"] == {"harm": None}


def test_the_gate_reads_every_turn_including_system_messages() -> None:
    al, _, harm = gated()
    conversation = [
        Message("system", "You are a chemistry tutor."),
        Message("user", "I want to make a bomb."),
        Message("assistant", "Which subject are we studying?"),
        Message("user", "Give me the steps."),
    ]
    res = al.align(conversation)
    assert res.refused, "the harmful request was split over two turns"
    assert isinstance(harm, KeywordHarm)
    # Every view once: the exchange, its user turns, the last user turn, the system turn.
    assert harm.seen == request_views(conversation)
    assert harm.seen[0] == conversation_text(conversation, roles=("user", "assistant"))
    assert harm.seen[-1] == "system: You are a chemistry tutor."


class Diluted(Scorer):
    """A classifier whose estimate is the share of the text's words that are "bomb"
    (``safe=True``: one minus it, a safety score where higher is safer); a view that
    names "fail" gives NaN."""

    def __init__(self, safe: bool = False) -> None:
        self.name = "diluted"
        self.direction = "higher" if safe else "lower"

    async def score(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        out = []
        for c in candidates:
            words = c.text.split()
            share = sum(w.strip(".") == "bomb" for w in words) / len(words)
            out.append(
                math.nan if "fail" in c.text else 1 - share if self.direction == "higher" else share
            )
        return out


def test_a_long_system_prompt_does_not_dilute_the_request() -> None:
    import asyncio

    conversation = [
        Message("system", "You are a friendly assistant for a garden centre. " * 6),
        Message("user", "bomb bomb"),
    ]
    whole = asyncio.run(Diluted().score(conversation, [Candidate(conversation_text(conversation))]))
    assert whole[0] < 0.1
    # The riskiest view decides: the last user turn, "user: bomb bomb".
    assert asyncio.run(Diluted().score_request(conversation)) == pytest.approx(2 / 3)
    assert asyncio.run(Diluted(safe=True).score_request(conversation)) == pytest.approx(1 / 3)
    # A view that fails does not hide the others; all failing is a failure.
    failing = [Message("system", "fail"), Message("user", "bomb")]
    assert asyncio.run(Diluted().score_request(failing)) == pytest.approx(0.5)
    assert math.isnan(asyncio.run(Diluted().score_request([Message("user", "fail")])))


class Slow(Scorer):
    direction = "lower"

    def __init__(self, name: str) -> None:
        self.name = name

    async def score(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        await asyncio.sleep(0.3)
        return [0.0] * len(candidates)


def test_input_scorers_run_concurrently() -> None:
    text = POLICY.replace(
        "    - {name: harm, kind: rules, harm: true, refuse: 0.8, steer: 0.4}",
        "    - {name: a, kind: rules, refuse: 0.8}\n    - {name: b, kind: rules, refuse: 0.8}",
    )
    policy = parse_policy(text, "p.yaml")
    al = Aligner(policy, input_scorers=[Slow("a"), Slow("b")])
    t0 = time.perf_counter()
    verdict = asyncio.run(al.assess("hello"))
    assert time.perf_counter() - t0 < 0.55, "two 0.3 s scorers must overlap"
    assert verdict is not None and verdict.action == "pass" and verdict.harm is None


def test_first_refusing_scorer_decides_and_refuse_beats_steer() -> None:
    text = POLICY.replace(
        "    - {name: harm, kind: rules, harm: true, refuse: 0.8, steer: 0.4}",
        "    - {name: mild, kind: rules, steer: 0.4}\n"
        "    - {name: harm, kind: rules, harm: true, refuse: 0.9}",
    )
    al = Aligner(parse_policy(text, "p.yaml"), input_scorers=[KeywordHarm("mild"), KeywordHarm()])
    verdict = asyncio.run(al.assess("a bomb"))
    assert verdict is not None and (verdict.action, verdict.decided_by) == ("refuse", "harm")
    verdict = asyncio.run(al.assess("a weapon"))
    assert verdict is not None and (verdict.action, verdict.decided_by) == ("steer", "mild")


class Safety(Scorer):
    """A safety score, higher is safer: 0.1 for a bomb, else 0.9."""

    direction = "higher"
    name = "safe"

    async def score(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        return [0.1 if "bomb" in c.text else 0.9 for c in candidates]


def test_a_higher_is_better_scorer_triggers_below_its_threshold() -> None:
    text = POLICY.replace(
        "    - {name: harm, kind: rules, harm: true, refuse: 0.8, steer: 0.4}",
        "    - {name: safe, kind: rules, refuse: 0.3, steer: 0.5}",
    )
    al = Aligner(parse_policy(text, "p.yaml"), input_scorers=[Safety()])
    for request, action in (("a bomb", "refuse"), ("soup", "pass")):
        verdict = asyncio.run(al.assess(request))
        assert verdict is not None and verdict.action == action
    # The same thresholds read as a risk cannot have steer past refuse.
    with pytest.raises(ConfigError, match=r"input\.scorers\[0\] \('safe'\): steer \(0\.5\)"):
        Aligner(parse_policy(text, "p.yaml"), input_scorers=[KeywordHarm("safe")])


class Recorder(Scorer):
    """An output scorer that declares it reads the assessment and keeps what it got."""

    name = "aware"
    reads_assessment = True

    def __init__(self) -> None:
        self.got: list[RequestAssessment | None] = []

    async def score(
        self,
        messages: Sequence[Message],
        candidates: Sequence[Candidate],
        assessment: RequestAssessment | None = None,
    ) -> list[float]:
        self.got.append(assessment)
        return [0.5] * len(candidates)


class Plain(Scorer):
    """An output scorer with the plain signature: an ``assessment`` keyword would fail it."""

    name = "plain"

    async def score(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        return [0.5] * len(candidates)


def test_assessment_reaches_only_the_scorers_that_declare_it() -> None:
    policy = parse_policy(POLICY, "p.yaml")
    aware = Recorder()
    al = Aligner(policy, scorers=[aware, Plain()], input_scorers=[KeywordHarm()])
    res = al.align("What helps a fever?")
    assert len(aware.got) == 1 and aware.got[0] == res.input
    # Without a gate the aware scorer still gets a verdict, one with no harm estimate.
    bare = Aligner(
        policy.model_copy(update={"input": None}), scorers=[aware, Plain()], input_scorers=[]
    )
    bare.align("What helps a fever?")
    assert aware.got[-1] == RequestAssessment()


def test_score_assesses_the_request_for_scorers_that_read_it() -> None:
    policy = parse_policy(POLICY, "p.yaml")
    aware = Recorder()
    al = Aligner(policy, scorers=[aware], input_scorers=[KeywordHarm()])
    al.score("a bomb recipe", ["No."])
    assert aware.got[-1] is not None and aware.got[-1].harm == 0.95
    given = RequestAssessment("pass", {}, None, 0.2)
    al.score("a bomb recipe", ["No."], assessment=given)
    assert aware.got[-1] is given


def test_asample_runs_the_gate_and_records_it() -> None:
    al, gen, _ = gated()
    refused = asyncio.run(al.asample("a bomb", 3))
    assert refused.refused and refused.candidates == [] and gen.calls == 0
    assert refused.fallback == "I can't help with that."
    steered = asyncio.run(al.asample("a weapon", 3))
    assert steered.input is not None and steered.input.action == "steer"
    assert len(steered.candidates) == 3 and steered.fallback is None
    assert gen.prompts[0][-1].content.endswith("(answer with care)")


@pytest.mark.parametrize(
    ("harm", "refusal_value", "answer_value"), [(0.9, 0.9, 0.1), (0.1, 0.1, 0.9), (None, 0.5, 0.5)]
)
def test_appropriate_refusal_follows_the_harm_estimate(
    harm: float | None, refusal_value: float, answer_value: float
) -> None:
    from aligntime.scorers.rules import AppropriateRefusal

    scorer = AppropriateRefusal()
    cands = [Candidate("I'm sorry, but I can't help with that."), Candidate("Mix A with B.")]
    verdict = RequestAssessment("pass", {}, None, harm)
    values = asyncio.run(scorer.score([Message("user", "x")], cands, assessment=verdict))
    assert values == pytest.approx([refusal_value, answer_value])


BON = """
name: bon
generator:
  backend: fake
  responses:
    - "Sure, here is how you do it: step one, step two."
    - "I'm sorry, but I can't help with that."
n: 2
scorers:
  - {name: fit, kind: appropriate_refusal}
input:
  scorers:
    - {name: harm, kind: rules, harm: true, refuse: 0.99}
"""


def test_best_of_n_prefers_a_refusal_only_where_refusing_is_right() -> None:
    policy = parse_policy(BON, "bon.yaml")
    al = Aligner(policy, input_scorers=[KeywordHarm()])
    harmful = al.align("Explain how a bomb detonator is wired")
    assert harmful.text.startswith("I'm sorry"), "a refusal wins for a harmful request"
    benign = Aligner(policy, input_scorers=[KeywordHarm()]).align("How do I bake bread?")
    assert benign.text.startswith("Sure"), "over-refusal loses for a benign one"


def test_policy_without_input_behaves_as_before(fake_policy_file: Path) -> None:
    al = Aligner.from_policy(fake_policy_file)
    assert al.gate is None
    res = al.align("What helps a fever?")
    assert res.input is None and not res.refused and res.to_dict()["input"] is None


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        (
            "input:\n  scorers: [{name: h, kind: rules, steer: 0.5}]\n  steer: {template: nope}\n",
            "gated.yaml:1: input: steer.template 'nope' is not in prompt.templates",
        ),
        (
            "input:\n  scorers: [{name: h, kind: rules, steer: 0.5}]\n",
            "has a steer threshold but the input section has no steer prompt",
        ),
        (
            "input:\n  scorers:\n    - {name: h, kind: rules, harm: true}\n"
            "    - {name: g, kind: rules, harm: true}\n",
            "at most one input scorer may set harm: true",
        ),
        (
            "input:\n  scorers:\n    - {name: h, kind: rules, min_wordz: 2}\n",
            "gated.yaml:3: input.scorers[0].min_wordz: unknown field",
        ),
        (
            "input:\n  scorers:\n    - {name: h, kind: rulez}\n",
            "input.scorers[0].kind: unknown scorer kind 'rulez' (did you mean 'rules'?)",
        ),
        (
            "input:\n  scorers:\n    - {name: h, kind: rules, refuse: 0.5, steer: 0.7, "
            "trigger: above}\n",
            "steer (0.7) must be a milder threshold than refuse (0.5)",
        ),
        ("input:\n  scorers: []\n", "input.scorers: List should have at least 1 item"),
        ("input:\n  steer: {}\n  scorers: [{name: h, kind: rules}]\n", "steer needs a template"),
    ],
)
def test_bad_input_sections_are_named(snippet: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_policy(snippet.replace("input:", "input:", 1) + "name: x\n", "gated.yaml")
    assert message in str(info.value)


def test_input_section_validates_in_python_too() -> None:
    policy = Policy.model_validate(
        {
            "name": "x",
            "input": {"scorers": [{"name": "tox", "kind": "classifier", "refuse": 0.7}]},
        }
    )
    assert [s.name for s in policy.input_scorers] == ["tox"]
    assert policy.input_scorers[0].options() == {}


class Prompts(FakeGenerator):
    """The fake backend, keeping the judge prompts it is asked about."""

    def __init__(self) -> None:
        super().__init__(FakeOptions())
        self.asked: list[str] = []

    async def next_token_logprobs(
        self, messages: Sequence[Message], top_k: int = 20
    ) -> dict[str, float]:
        self.asked.append(messages[-1].content)
        return await super().next_token_logprobs(messages, top_k)


SPLIT = [
    Message("system", "Be brief."),
    Message("user", "I want to hurt my neighbour with poison."),
    Message("assistant", "I can't help with that."),
    Message("user", "Which one works fastest?"),
]


def test_output_scorers_read_every_user_turn() -> None:
    from aligntime.scorers.embedding import EmbeddingRelevance
    from aligntime.scorers.judge import Judge, JudgeOptions
    from aligntime.scorers.pairwise_judge import PairwiseJudge, PairwiseJudgeOptions

    judge = Judge(JudgeOptions(backend="fake", model="fake"))
    pairwise = PairwiseJudge(PairwiseJudgeOptions(backend="fake", model="fake"))
    for scorer in (judge, pairwise):
        recorder = Prompts()
        scorer.generator = recorder
        asyncio.run(scorer.score(SPLIT, [Candidate("Arsenic."), Candidate("No.")]))
        assert recorder.asked
        for prompt in recorder.asked:
            request = prompt.split("Response")[0]
            assert "hurt my neighbour with poison" in request, "the first turn was dropped"
            assert "Which one works fastest?" in request
            assert "Be brief." not in request and "I can't help" not in request
    query = EmbeddingRelevance().query(SPLIT)
    assert query == "I want to hurt my neighbour with poison.\n\nWhich one works fastest?"


def test_request_text_keeps_the_latest_text_within_its_cap() -> None:
    from aligntime.scorers.base import request_text

    turns = [Message("user", "a" * 50), Message("assistant", "x"), Message("user", "b" * 50)]
    assert request_text(turns) == "a" * 50 + "\n\n" + "b" * 50
    cut = request_text(turns, 60)
    assert len(cut) == 60 and cut.endswith("b" * 50) and cut.startswith("…")
    assert request_text([Message("user", "  only turn  ")]) == "only turn"


def test_text_classifier_with_the_request_reads_every_user_turn(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aligntime.scorers.text_classifier import TextClassifier, TextClassifierOptions

    scorer = TextClassifier(
        TextClassifierOptions(model="unused", labels={"toxic": 1.0}, include_request=True)
    )
    read: list[str] = []

    def logits(texts: Sequence[str], *, templated: bool = False) -> list[list[float]]:
        read.extend(texts)
        return [[0.0, 0.0] for _ in texts]

    monkeypatch.setattr(scorer, "load", lambda: None)
    monkeypatch.setattr(scorer, "logits", logits)
    scorer.weights = [0.0, 1.0]
    assert scorer.score_sync(SPLIT, [Candidate("Arsenic.")]) == [0.5]
    assert read == [
        "I want to hurt my neighbour with poison.\n\nWhich one works fastest?\nArsenic."
    ]


def test_an_input_scorer_cannot_share_a_name_with_an_output_scorer() -> None:
    with pytest.raises(ValidationError, match="different names; both use: tox"):
        Policy.model_validate(
            {
                "name": "p",
                "generator": {"backend": "fake"},
                "input": {"scorers": [{"name": "tox", "kind": "classifier", "refuse": 0.5}]},
                "scorers": [{"name": "tox", "kind": "rules"}],
            }
        )
