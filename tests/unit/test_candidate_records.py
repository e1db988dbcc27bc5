"""One codec for a candidate (to_record / from_record) and one ranking key (rank_key)."""

from __future__ import annotations

import json
import math

from aligntime.evaluation.pairwise import Pair, pairwise_accuracy
from aligntime.evaluation.replay import best_of_n_choice, to_candidates
from aligntime.strategies.base import RoundState, argmax_score
from aligntime.strategies.best_of_n import BestOfN
from aligntime.strategies.vote import MajorityVote
from aligntime.types import Candidate, rank_key


def test_a_record_is_json_and_reads_back_as_the_same_candidate() -> None:
    cand = Candidate(
        text="Rest and fluids.",
        tokens=4,
        finish_reason="length",
        scores={"safety": 0.25, "judge": math.nan},
        score=0.5,
        passed=False,
        gate_failures=("safety (S1 Violent Crimes)",),
        logprob=-3.5,
        state="rejected",
        origin="refusal",
    )
    record = cand.to_record()
    # Strict JSON: a failed scorer's NaN is null, never the non-standard NaN token.
    text = json.dumps(record, allow_nan=False)
    assert record["scores"] == {"safety": 0.25, "judge": None}
    back = Candidate.from_record(json.loads(text))
    assert math.isnan(back.scores["judge"])
    assert back == Candidate(**{**cand.__dict__, "scores": back.scores})
    assert back.scores["safety"] == 0.25
    endless = Candidate("b", scores={"reward": -math.inf}, score=math.inf).to_record()
    assert (endless["score"], endless["scores"]) == (None, {"reward": None})


def test_an_older_record_takes_the_defaults_and_its_nan_scores_still_read() -> None:
    old = json.loads('{"text": "a", "tokens": null, "scores": {"s": NaN}, "score": 0.1}')
    cand = Candidate.from_record(old)
    assert (cand.tokens, cand.finish_reason, cand.passed, cand.state, cand.origin) == (
        0,
        "stop",
        True,
        "complete",
        "sampled",
    )
    assert math.isnan(cand.scores["s"])
    assert to_candidates([old]) == [cand]


def test_rank_key_puts_passed_first_and_nan_or_missing_scores_last() -> None:
    nan, none, low, high = (Candidate("x", score=s) for s in (math.nan, None, 0.1, 0.9))
    failed = Candidate("y", score=5.0, passed=False)
    ranked = sorted([nan, failed, low, none, high], key=rank_key, reverse=True)
    assert ranked[:2] == [high, low] and ranked[-1] is failed
    assert rank_key(nan) == rank_key(none) == (True, -math.inf)


def test_a_nan_score_never_wins_a_selection() -> None:
    # The first candidate's NaN once stuck as the best: NaN compares false with everything.
    pool = [Candidate("a", score=math.nan), Candidate("b", score=0.2), Candidate("c", score=0.7)]
    assert argmax_score(pool, [0, 1, 2]) == 2
    state = RoundState(requested=3, budget=0)
    assert BestOfN().decide(pool, state).best == 2
    assert MajorityVote().decide(pool, state).best == 2
    # Ties keep the earliest, NaN and missing scores alike.
    assert argmax_score([Candidate("a"), Candidate("b", score=math.nan)], [0, 1]) == 0
    assert argmax_score(pool, []) is None
    # Replay ranks as the strategy does: a pair always holds a better one than the NaN.
    choice = best_of_n_choice(pool, 2)
    assert choice.probs.get(0, 0.0) == 0.0 and math.isclose(sum(choice.probs.values()), 1.0)


def test_pairwise_accuracy_ranks_a_nan_score_below_a_number() -> None:
    pair = Pair(id="1", prompt="p", good="good", bad="bad", kind="k")

    def score(prompt: str, answers: list[str]) -> list[Candidate]:
        return [Candidate(a, score=0.3 if a == "good" else math.nan) for a in answers]

    assert pairwise_accuracy([pair], score).accuracy == 1.0
