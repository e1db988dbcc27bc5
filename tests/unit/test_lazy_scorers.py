"""Lazy scorers: an expensive scorer rates only the candidates that can still be chosen.

The skip is meant to be exact: for a strategy that only compares candidates with the
leader, the decision is the one a full scoring pass gives. The property test checks that
over many random score tables, with ties, failed gates and empty answers in them.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path

import pytest

from aligntime import Aligner
from aligntime.errors import ConfigError
from aligntime.export.formats import ExportFilters, examples
from aligntime.export.sources import Group, Option, _options
from aligntime.policy.loader import parse_policy
from aligntime.policy.schema import GateSpec, GeneratorSpec, Policy, ScorerSpec, StrategySpec
from aligntime.scorers.base import Scorer
from aligntime.scorers.combine import ScorerWeighting, combine, contenders
from aligntime.strategies.adaptive import Adaptive, AdaptiveOptions
from aligntime.strategies.base import RoundState, Strategy
from aligntime.strategies.best_of_n import BestOfN
from aligntime.strategies.early_rejection import EarlyRejection
from aligntime.strategies.guided import Guided
from aligntime.strategies.passthrough import PassThrough
from aligntime.strategies.rejection import Rejection, RejectionOptions
from aligntime.strategies.soft import SoftBestOfN
from aligntime.strategies.vote import MajorityVote
from aligntime.types import Candidate, Message

TEXTS = [f"answer number {i}" for i in range(8)]
MESSAGES = [Message("user", "a question")]


class Table(Scorer):
    """Rates each answer from a table by its text, and records every text it was shown."""

    def __init__(self, name: str, values: dict[str, float] | None = None) -> None:
        super().__init__(name=name)
        self.values = values or {}
        self.seen: list[list[str]] = []

    async def score(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        self.seen.append([c.text for c in candidates])
        return [self.values.get(c.text, 0.5) for c in candidates]

    @property
    def rated(self) -> list[str]:
        return [text for call in self.seen for text in call]


def _policy(
    weights: tuple[float, float, float, float],
    *,
    strategy: str | StrategySpec = "best_of_n",
    n: int = 5,
    lazy: tuple[bool, bool] = (False, True),
    responses: int | None = None,
    budget: int | None = None,
) -> Policy:
    """Two eager scorers (one gates at min 0.2), and two that may be lazy."""
    w_rules, w_gate, w_judge, w_extra = weights
    answers = TEXTS[: responses or n]
    return Policy(
        name="lazy-test",
        generator=GeneratorSpec(backend="fake", responses=answers),
        n=n,
        budget=budget,
        scorers=[
            ScorerSpec(name="rules", kind="rules", weight=w_rules),
            ScorerSpec(name="safety", kind="rules", weight=w_gate, gate=GateSpec(min=0.2)),
            ScorerSpec(name="judge", kind="judge", weight=w_judge, lazy=lazy[0]),
            ScorerSpec(name="extra", kind="judge", weight=w_extra, lazy=lazy[1]),
        ],
        strategy=strategy if isinstance(strategy, StrategySpec) else StrategySpec(kind=strategy),
    )


def _aligner(policy: Policy) -> tuple[Aligner, dict[str, Table]]:
    tables = {s.name: Table(s.name) for s in policy.scorers}
    return Aligner(policy, scorers=list(tables.values())), tables


def _value(rng: random.Random) -> float:
    # Coarse values make ties (exact and at the skip boundary) common.
    return rng.choice([0.0, 1.0, round(rng.random(), 1), rng.random()])


def test_lazy_choice_equals_the_full_choice_over_random_score_tables() -> None:
    rng = random.Random(20261130)
    skipped = leaders_tied = 0

    async def one_case() -> None:
        nonlocal skipped, leaders_tied
        weights = (
            rng.choice([0.5, 1.0, 2.0]),
            rng.choice([0.0, 0.5]),
            rng.choice([0.5, 1.0, 3.0]),
            rng.choice([0.25, 1.0]),
        )
        judge_lazy = rng.random() < 0.5
        al, tables = _aligner(_policy(weights, lazy=(judge_lazy, True)))
        n = rng.randint(1, 8)
        texts = TEXTS[:n]
        if rng.random() < 0.2:
            texts = [*texts[:-1], "   "]  # an empty answer fails the implicit gate
        for table in tables.values():
            table.values = {t: _value(rng) for t in texts}
        cands = [Candidate(text=t) for t in texts]
        full = await al._score(MESSAGES, cands, None)
        lazy = await al._score(MESSAGES, cands, None, lazy=True)
        threshold = rng.choice([0.3, 0.5, 0.7])
        state = RoundState(requested=n, budget=0)
        deciders: list[Strategy] = [
            BestOfN(),
            Rejection(RejectionOptions(threshold=threshold)),
            Adaptive(AdaptiveOptions(threshold=threshold)),
        ]
        for strategy in deciders:
            # The reasons may count differently ("1 of 5 reached"); the verdict may not.
            got, want = strategy.decide(lazy, state), strategy.decide(full, state)
            assert (got.best, got.more) == (want.best, want.more), (
                strategy.name,
                weights,
                [t.values for t in tables.values()],
            )
        for f, z in zip(full, lazy, strict=True):
            assert f.passed == z.passed and f.gate_failures == z.gate_failures
            assert z.score is not None and f.score is not None
            if "extra" in z.scores:  # a contender: every scorer rated it, as in a full pass
                assert z.scores == f.scores and z.score == f.score
            else:
                skipped += 1
                assert z.score <= f.score
                assert "judge" not in z.scores or not judge_lazy
        best = BestOfN().decide(full, state).best
        if best is not None:
            top = [c for c in full if c.passed and c.score == full[best].score]
            leaders_tied += len(top) > 1

    async def every_case() -> None:
        for _ in range(200):
            await one_case()

    asyncio.run(every_case())
    # The property must have been exercised: many skips, and some tied leaders.
    assert skipped > 100 and leaders_tied > 0, (skipped, leaders_tied)


def test_the_lazy_scorer_sees_only_the_contenders() -> None:
    al, tables = _aligner(_policy((1.0, 0.5, 1.0, 1.0), lazy=(True, True), n=5))
    # rules and safety decide the partial scores; judge and extra could add 2/3.5.
    rules = {TEXTS[0]: 1.0, TEXTS[1]: 0.9, TEXTS[2]: 0.0, TEXTS[3]: 1.0, TEXTS[4]: 0.3}
    safety = {TEXTS[0]: 1.0, TEXTS[1]: 1.0, TEXTS[2]: 0.3, TEXTS[3]: 0.1, TEXTS[4]: 0.2}
    tables["rules"].values, tables["safety"].values = rules, safety
    res = al.align("a question")
    # W = 3.5; partial scores x W: 0 -> 1.5, 1 -> 1.4, 2 -> 0.15, 4 -> 0.4, and 3 failed
    # the safety gate (0.1 < 0.2). The lazy pair can add up to 2 (x W): every eligible
    # candidate can still reach the leader, so only the ineligible 3 is skipped ...
    assert tables["judge"].rated == [TEXTS[0], TEXTS[1], TEXTS[2], TEXTS[4]]
    assert res.best == 0
    assert "judge" not in res.candidates[3].scores and "extra" not in res.candidates[3].scores

    # ... and with a smaller lazy share, the trailing candidates are skipped too.
    al, tables = _aligner(_policy((1.0, 0.5, 0.25, 0.25), lazy=(True, True), n=5))
    tables["rules"].values, tables["safety"].values = rules, safety
    res = al.align("a question")
    # W = 2, reach = 0.25: partials 0 -> 0.75, 1 -> 0.70, 2 -> 0.075, 4 -> 0.20.
    assert tables["judge"].seen == [[TEXTS[0], TEXTS[1]]] == tables["extra"].seen
    assert tables["rules"].rated == TEXTS[:5], "eager scorers rate every candidate"
    skipped = res.candidates[2]
    assert "judge" not in skipped.scores and "extra" not in skipped.scores
    assert set(skipped.scores) == {"rules", "safety"}
    assert skipped.score == pytest.approx((1.0 * 0.0 + 0.5 * 0.3) / 2.0)
    assert skipped.passed, "a skipped candidate is eligible, only out of reach"
    assert set(res.candidates[0].scores) == {"rules", "safety", "judge", "extra"}
    # A skip is not a failure: nothing is NaN, and the JSON simply lacks the key.
    assert "judge" not in res.to_dict()["candidates"][2]["scores"]


def test_nothing_eligible_means_the_lazy_scorer_rates_nobody() -> None:
    al, tables = _aligner(_policy((1.0, 0.5, 1.0, 1.0), n=3))
    tables["safety"].values = dict.fromkeys(TEXTS, 0.0)  # every candidate fails the gate
    res = al.align("a question")
    assert res.best is None and res.fallback
    assert tables["extra"].seen == [] and tables["judge"].rated == TEXTS[:3]


@pytest.mark.parametrize("kind", ["soft_best_of_n", "vote", "passthrough"])
def test_strategies_that_weigh_every_candidate_score_everything(kind: str) -> None:
    n = 1 if kind == "passthrough" else 5
    al, tables = _aligner(_policy((1.0, 0.5, 0.25, 0.25), strategy=kind, n=n))
    tables["rules"].values = {TEXTS[0]: 1.0, TEXTS[1]: 0.0, TEXTS[2]: 0.0}
    res = al.align("a question")
    assert tables["extra"].rated == TEXTS[:n]
    assert all("extra" in c.scores for c in res.candidates)


def test_only_leader_matters_is_declared_where_it_holds() -> None:
    assert BestOfN.only_leader_matters and Rejection.only_leader_matters
    assert Adaptive.only_leader_matters
    for cls in (SoftBestOfN, MajorityVote, PassThrough, Guided, EarlyRejection):
        assert not cls.only_leader_matters, cls.name


def test_asample_and_ascore_rate_every_candidate() -> None:
    al, tables = _aligner(_policy((1.0, 0.5, 0.25, 0.25), n=5))
    tables["rules"].values = {TEXTS[0]: 1.0, TEXTS[1]: 0.0, TEXTS[2]: 0.0}
    pool = asyncio.run(al.asample("a question", 5))
    assert tables["extra"].rated == TEXTS[:5]
    assert all("extra" in c.scores for c in pool.candidates)
    scored = al.score("a question", TEXTS[:3])
    assert all("extra" in c.scores for c in scored)


def test_rejection_rounds_stay_exact() -> None:
    """Each round is scored on its own; a candidate skipped in round one stays beaten."""
    rejection = StrategySpec(kind="rejection", threshold=0.7)
    results, judged = [], []
    for marks in ((False, True), (False, False)):
        policy = _policy(
            (1.0, 0.5, 0.25, 0.25), strategy=rejection, n=2, lazy=marks, responses=4, budget=6
        )
        al, tables = _aligner(policy)
        tables["rules"].values = {TEXTS[0]: 0.5, TEXTS[1]: 0.0, TEXTS[2]: 1.0, TEXTS[3]: 0.0}
        tables["safety"].values = {TEXTS[1]: 0.3}
        results.append(al.align("a question"))
        judged.append(tables["extra"].rated)
    # Round 1 (answers 0, 1): partials 0.375 and 0.075, reach 0.25: 1 is skipped and no
    # candidate can reach 0.7. Round 2 (answers 2, 3): 2 reaches 0.75 and is accepted.
    lazy, full = results
    assert judged == [[TEXTS[0], TEXTS[2]], TEXTS[:4]]
    assert len(lazy.candidates) == len(full.candidates) == 4
    assert lazy.best == full.best == 2 and lazy.text == full.text
    assert "extra" not in lazy.candidates[1].scores


def test_policy_rejects_a_lazy_scorer_with_a_gate_or_no_weight() -> None:
    head = "name: x\ngenerator: {backend: fake}\nscorers:\n"
    with pytest.raises(ConfigError, match=r"p\.yaml:4: scorers\[0\]\.lazy: .*cannot have a gate"):
        parse_policy(head + "  - {name: j, kind: rules, lazy: true, gate: {max: 0.5}}\n", "p.yaml")
    with pytest.raises(ConfigError, match=r"scorers\[1\]\.lazy: a lazy scorer needs weight > 0"):
        parse_policy(
            head
            + "  - {name: a, kind: rules}\n  - {name: j, kind: rules, lazy: true, weight: 0}\n",
            "p.yaml",
        )
    policy = parse_policy(head + "  - {name: j, kind: rules, lazy: true}\n", "p.yaml")
    assert policy.scorers[0].lazy and policy.scorers[0].options() == {}


def test_a_pairwise_judge_cannot_be_lazy() -> None:
    text = (
        "name: x\ngenerator: {backend: fake}\nscorers:\n"
        "  - {name: rules, kind: rules}\n"
        "  - {name: pj, kind: pairwise_judge, backend: fake, lazy: true}\n"
    )
    with pytest.raises(ConfigError, match=r"p\.yaml:5: scorers\[1\]\.lazy: .*against each other"):
        Aligner(parse_policy(text, "p.yaml"))


def test_combine_leaves_an_unrated_value_absent_and_contenders_keep_the_leader() -> None:
    rules, judge = Table("rules"), Table("judge")
    weightings = [
        ScorerWeighting("rules", 1.0, None, rules),
        ScorerWeighting("judge", 1.0, None, judge),
    ]
    old = Candidate(text="b", scores={"judge": 0.9})  # a value given for an earlier text
    out = combine(
        [Candidate(text="a"), old], {"rules": [1.0, 0.4], "judge": [0.5, None]}, weightings
    )
    assert out[0].scores == {"rules": 1.0, "judge": 0.5} and out[0].score == 0.75
    assert out[1].scores == {"rules": 0.4} and out[1].score == pytest.approx(0.2)
    partial = combine(
        [Candidate(text=t) for t in "abcd"],
        {"rules": [0.2, 1.0, 0.5, 0.99]},
        [weightings[0]],
    )
    partial[3] = Candidate(text="d", score=2.0, passed=False)  # ineligible: never in
    assert contenders(partial, 0.5) == [1, 2]
    assert contenders(partial, 0.49) == [1]
    assert contenders([Candidate(text="x", passed=False)], 1.0) == []


def test_export_does_not_take_a_margin_from_a_lower_bound() -> None:
    full = frozenset({"rules", "judge"})
    group = Group(
        [{"role": "user", "content": "q"}],
        [
            Option("best", 0.9, True, full),
            Option("skipped", 0.2, True, frozenset({"rules"})),
            Option("far", 0.3, True, full),
            Option("unsafe", 0.95, False, frozenset({"rules"})),
        ],
        0,
        "test",
    )
    rows = list(examples([group], "dpo", ExportFilters(min_margin=0.1, pairs=5)))
    assert [r["rejected"][0]["content"] for r in rows] == ["unsafe", "far"]
    read = _options([{"text": "t", "score": 0.5, "passed": True, "scores": {"a": None}}], "w")
    assert read[0].rated_by == {"a"}


LAZY_POLICY = """\
name: lazy
generator:
  backend: fake
  responses:
    - "Keep the child hydrated, let them rest, and call a doctor if the fever is high."
    - "You idiot, figure it out yourself, damn it."
    - "the the the the the the the the the the the the the the the the"
n: 3
scorers:
  - {name: safety, kind: classifier, weight: 0.5, gate: {max: 0.6}}
  - {name: rules, kind: rules, weight: 1.0}
  - {name: judge, kind: judge, backend: fake, weight: 0.3, lazy: true}
fallback: "Sorry, no good answer."
"""


def test_the_server_sends_a_skipped_score_as_absent_not_as_a_failure(tmp_path: Path) -> None:
    import httpx

    from aligntime.server import ServerOptions, app_from_policies
    from aligntime.server.testing import LiveServer

    policy = tmp_path / "lazy.yaml"
    policy.write_text(LAZY_POLICY)
    app = app_from_policies([policy], ServerOptions(anonymous_rights=frozenset({"candidates"})))
    app.state.service.load()
    body = {
        "model": "lazy",
        "messages": [{"role": "user", "content": "My child has a fever. What should I do?"}],
        "aligntime": {"return_candidates": True},
    }
    with LiveServer(app) as live:
        reply = httpx.post(live.url + "/v1/chat/completions", json=body, timeout=30)
        metrics = httpx.get(live.url + "/metrics", timeout=30).text
    assert reply.status_code == 200, reply.text
    ext = reply.json()["aligntime"]
    assert ext["best"] == 0 and not ext["fallback"] and not ext["fail_closed"]
    assert ext["scorer_errors"] == []
    scores = [c["scores"] for c in ext["candidates"]]
    assert set(scores[0]) == {"safety", "rules", "judge"}
    # The gate-failed answer and the one that trails by more than the judge's share
    # were not judged: no key, and not a null that would read as a failed scorer.
    assert set(scores[1]) == set(scores[2]) == {"safety", "rules"}
    assert "aligntime_scorer_errors_total" in metrics, "the series exists, with no sample"
    assert "aligntime_scorer_errors_total{" not in metrics
