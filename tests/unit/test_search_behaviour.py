"""What the search strategies ask of the engine and the scorers, step by step.

A scripted engine continues a few fixed answers word by word (one word, one
token) and records every call; a scripted scorer ranks partial answers by
their words and records what it was shown. The tests pin the schedule a
strategy promises (how many answers are started, when they are pruned, how
far each step writes), what the user gets back (text, tokens, finish reason,
rejected drafts kept for audit) and the timings and usage reported.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from dataclasses import replace

import pytest

from aligntime.generators.base import Capabilities, Generator
from aligntime.request import AlignRequest
from aligntime.strategies.adaptive import Adaptive
from aligntime.strategies.base import (
    PARTIAL,
    REJECTED,
    Decision,
    RoundState,
    SamplingRounds,
    SearchContext,
    SearchOutcome,
    Strategy,
)
from aligntime.strategies.early_rejection import EarlyRejection
from aligntime.strategies.guided import Guided
from aligntime.types import Candidate, Generation, GenerationParams, Message, Usage

PROMPT = [Message("user", "My child has a fever.")]
PARAMS = GenerationParams(temperature=0.7, seed=5)


def words(prefix: str, n: int) -> str:
    return " ".join(f"{prefix}{i}" for i in range(1, n + 1))


class Script(Generator):
    """Continues fixed answers; one word is one token. Row i of a call takes the i-th
    answer that continues its prefix (so equal prefixes can still diverge)."""

    name = "script"
    capabilities = Capabilities(n_sampling=True, logprobs=True, token_steps=True)

    def __init__(
        self,
        answers: Sequence[str],
        *,
        delay_s: float = 0.0,
        logprob_per_token: Sequence[float] | None = None,
        short: bool = False,
    ) -> None:
        self.answers = [a.split() for a in answers]
        self.lp = list(logprob_per_token or [-1.0] * len(answers))
        self.delay_s = delay_s
        self.short = short  # return one continuation fewer than asked (a broken backend)
        self.calls: list[tuple[str, int, int]] = []
        self.prefixes: list[list[str]] = []
        self.params: list[GenerationParams] = []

    async def generate(
        self, messages: Sequence[Message], n: int, params: GenerationParams
    ) -> Generation:
        assert params.max_tokens is not None
        self.calls.append(("generate", n, params.max_tokens))
        self.params.append(params)
        await asyncio.sleep(self.delay_s)
        rows = [self._piece(i, [], params.max_tokens) for i in range(n)]
        return Generation(rows, Usage(3, sum(c.tokens for c in rows)))

    async def extend(
        self,
        messages: Sequence[Message],
        prefixes: Sequence[str],
        max_tokens: int,
        params: GenerationParams,
    ) -> Generation:
        self.calls.append(("extend", len(prefixes), max_tokens))
        self.prefixes.append(list(prefixes))
        self.params.append(params)
        await asyncio.sleep(self.delay_s)
        rows = [self._piece(i, p.split(), max_tokens) for i, p in enumerate(prefixes)]
        if self.short:
            rows = rows[:-1]
        return Generation(rows, Usage(3, sum(c.tokens for c in rows)))

    def _piece(self, row: int, done: list[str], max_tokens: int) -> Candidate:
        matching = [i for i, a in enumerate(self.answers) if a[: len(done)] == done]
        index = matching[row % len(matching)]
        answer = self.answers[index]
        new = answer[len(done) : len(done) + max_tokens]
        # The answer ended inside this step: "stop"; cut by the step's limit: "length".
        ended = len(done) + len(new) == len(answer) and len(new) < max_tokens
        text = (" " if done and new else "") + " ".join(new)
        return Candidate(
            text=text,
            tokens=len(new),
            finish_reason="stop" if ended else "length",
            logprob=self.lp[index] * len(new),
        )


class Scores:
    """Scores a text by its words: g* = 1, m* = 0.5, anything else 0 (mean over words);
    an answer with an x* word fails a gate. Optional fixed values by first word."""

    def __init__(self, delay_s: float = 0.0, fixed: dict[str, float | None] | None = None):
        self.delay_s = delay_s
        self.fixed = fixed or {}
        self.seen: list[list[tuple[str, str]]] = []

    async def __call__(self, candidates: list[Candidate]) -> list[Candidate]:
        # A draft still being written shows as partial; a complete one by its finish reason.
        self.seen.append(
            [(c.text, c.finish_reason if c.state == "complete" else c.state) for c in candidates]
        )
        await asyncio.sleep(self.delay_s)
        return [self._one(c) for c in candidates]

    def _one(self, c: Candidate) -> Candidate:
        ws = c.text.split()
        first = ws[0] if ws else ""
        if first in self.fixed:
            value = self.fixed[first]
        else:
            value = sum(1.0 if w[0] == "g" else 0.5 if w[0] == "m" else 0.0 for w in ws) / max(
                1, len(ws)
            )
        failed = any(w.startswith("x") for w in ws)
        return replace(
            c, score=value, passed=not failed, gate_failures=("safety",) if failed else ()
        )


def _ctx(gen: Generator, scores: Scores, *, n: int = 4, max_tokens: int = 20) -> SearchContext:
    return SearchContext(
        generator=gen,
        prompt_messages=list(PROMPT),
        request=AlignRequest(list(PROMPT), n, params=PARAMS),
        max_tokens=max_tokens,
        scorer=scores,
    )


def _search(strategy: EarlyRejection | Guided, ctx: SearchContext) -> tuple[SearchOutcome, float]:
    t0 = time.perf_counter()
    out = asyncio.run(strategy.search(ctx))
    return out, time.perf_counter() - t0


def _er(**options: object) -> EarlyRejection:
    return EarlyRejection(EarlyRejection.Options.model_validate(options))


FOUR = [words("g", 20), words("b", 20), words("m", 20), words("y", 20)]


# --- early rejection -------------------------------------------------------------------


def test_early_rejection_prunes_every_chunk_then_writes_the_rest_in_one_step() -> None:
    gen, scores = Script(FOUR), Scores()
    out, _ = _search(_er(chunk_tokens=5, keep=0.5, min_keep=1), _ctx(gen, scores))
    # 4 started; the best half kept at 5 tokens; the best one at 10, then written to
    # the end (10 more) in one step.
    assert gen.calls == [("generate", 4, 5), ("extend", 2, 5), ("extend", 1, 10)]
    assert gen.prefixes == [[words("g", 5), words("m", 5)], [words("g", 10)]]
    # The request's sampling settings reach every step.
    assert gen.params == [replace(PARAMS, max_tokens=5), PARAMS, PARAMS]
    # Partial answers are scored as partial; the finished one as complete.
    assert [[r for _, r in call] for call in scores.seen] == [
        [PARTIAL] * 4,
        [PARTIAL] * 2,
        ["length"],
    ]
    finished = [c for c in out.candidates if c.state != REJECTED]
    rejected = [c for c in out.candidates if c.state == REJECTED]
    assert [(c.text, c.tokens, c.finish_reason) for c in finished] == [
        (words("g", 20), 20, "length")
    ]
    assert finished[0].score == 1.0
    # Dropped drafts stay, with the partial text and the score they were dropped on.
    assert sorted((c.text, c.tokens, c.score) for c in rejected) == [
        (words("b", 5), 5, 0.0),
        (words("m", 10), 10, 0.5),
        (words("y", 5), 5, 0.0),
    ]
    assert out.usage.completion_tokens == 4 * 5 + 2 * 5 + 10
    assert out.usage.prompt_tokens == 3 * 3
    assert _er().decide(out.candidates, RoundState(4, 0)).best == 0


def test_early_rejection_stops_pruning_after_max_checks() -> None:
    gen = Script([words("g", 20), words("m", 20), *[words(f"b{i}_", 20) for i in range(6)]])
    strategy = _er(chunk_tokens=5, keep=0.5, min_keep=1, max_checks=2)
    _search(strategy, _ctx(gen, Scores(), n=8))
    assert gen.calls == [("generate", 8, 5), ("extend", 4, 5), ("extend", 2, 10)]


def test_early_rejection_never_checks_when_min_keep_are_started() -> None:
    gen, scores = Script(FOUR[:2]), Scores()
    out, _ = _search(_er(chunk_tokens=5, min_keep=2), _ctx(gen, scores, n=2))
    assert gen.calls == [("generate", 2, 5), ("extend", 2, 15)]
    assert [[r for _, r in call] for call in scores.seen] == [["length", "length"]]
    assert [c.tokens for c in out.candidates] == [20, 20]


def test_early_rejection_last_chunk_is_cut_to_the_token_limit() -> None:
    gen = Script([words("g", 20), words("m", 20), *[words(f"b{i}_", 20) for i in range(6)]])
    out, _ = _search(
        _er(chunk_tokens=5, keep=0.5, min_keep=1), _ctx(gen, Scores(), n=8, max_tokens=12)
    )
    assert gen.calls == [("generate", 8, 5), ("extend", 4, 5), ("extend", 2, 2)]
    done = [c for c in out.candidates if c.state != REJECTED]
    assert [(c.tokens, c.finish_reason) for c in done] == [(12, "length"), (12, "length")]


def test_early_rejection_does_not_continue_an_answer_that_already_ended() -> None:
    short = "g1 g2 g3"  # ends inside the first chunk
    gen, scores = Script([short, words("b", 20), words("m", 20)]), Scores()
    out, _ = _search(_er(chunk_tokens=5, keep=0.5, min_keep=1), _ctx(gen, scores, n=3))
    assert all(short not in p for call in gen.prefixes for p in call)
    assert gen.calls == [("generate", 3, 5), ("extend", 1, 15)]  # only m goes on
    done = {c.text: c for c in out.candidates if c.state != REJECTED}
    assert done[short].finish_reason == "stop" and done[short].tokens == 3


def test_early_rejection_ranks_missing_scores_last() -> None:
    answers = [words("n", 20), words("l", 20), words("o", 20), words("h", 20)]
    scores = Scores(fixed={"n1": math.nan, "l1": 0.1, "o1": None, "h1": 0.2})
    gen = Script(answers)
    _search(_er(chunk_tokens=5, keep=0.5, min_keep=2), _ctx(gen, scores))
    assert gen.prefixes[0] == [words("l", 5), words("h", 5)]


def test_early_rejection_reports_generation_and_scoring_time_over_all_steps() -> None:
    gen, scores = Script(FOUR, delay_s=0.04), Scores(delay_s=0.04)
    out, wall = _search(_er(chunk_tokens=5, keep=0.5, min_keep=1), _ctx(gen, scores))
    assert len(gen.calls) == 3 and len(scores.seen) == 3
    assert 3 * 0.04 <= out.generate_s <= wall
    assert 3 * 0.04 <= out.score_s <= wall
    assert out.generate_s + out.score_s <= wall


def test_early_rejection_refuses_a_backend_that_loses_continuations() -> None:
    gen = Script(FOUR, short=True)
    with pytest.raises(ValueError):
        _search(_er(chunk_tokens=5), _ctx(gen, Scores()))


# --- guided ----------------------------------------------------------------------------


def _guided(**options: object) -> Guided:
    return Guided(Guided.Options.model_validate(options))


def test_guided_blocks_follow_the_scorers_up_to_the_token_limit() -> None:
    gen, scores = Script([words("b", 20), words("g", 20)]), Scores()
    out, _ = _search(_guided(block_tokens=5, top_k=2, weight=5.0), _ctx(gen, scores, max_tokens=12))
    # First block sampled in one n-request; later blocks continue the chosen text.
    assert gen.calls == [("generate", 2, 5), ("extend", 2, 5), ("extend", 2, 2)]
    assert gen.prefixes == [[words("g", 5)] * 2, [words("g", 10)] * 2]
    # The request's sampling settings reach every step; the first block's length is the step's.
    assert gen.params == [replace(PARAMS, max_tokens=5), PARAMS, PARAMS]
    assert [[r for _, r in call] for call in scores.seen] == [
        [PARTIAL, PARTIAL],
        [PARTIAL],  # identical continuations are scored once
        [PARTIAL],
        ["length"],  # the answer is rescored as complete
    ]
    (answer,) = out.candidates
    assert (answer.text, answer.tokens, answer.finish_reason) == (words("g", 12), 12, "length")
    assert out.usage.completion_tokens == 2 * 5 + 2 * 5 + 2 * 2
    assert _guided().decide(out.candidates, RoundState(1, 0)).best == 0


def test_guided_stops_when_the_chosen_block_ends_the_answer() -> None:
    gen, scores = Script(["g1 g2 g3", words("b", 20)]), Scores()
    out, _ = _search(_guided(block_tokens=5, top_k=2), _ctx(gen, scores))
    assert gen.calls == [("generate", 2, 5)]
    (answer,) = out.candidates
    assert (answer.text, answer.tokens, answer.finish_reason) == ("g1 g2 g3", 3, "stop")


def test_guided_with_nothing_proposed_returns_one_empty_scored_answer() -> None:
    gen, scores = Script([]), Scores()
    gen.answers = []

    async def nothing(messages: Sequence[Message], n: int, params: GenerationParams) -> Generation:
        return Generation([], Usage(3, 0))

    gen.generate = nothing  # type: ignore[method-assign]
    out, _ = _search(_guided(block_tokens=4), _ctx(gen, scores))
    assert [(c.text, c.tokens, c.score) for c in out.candidates] == [("", 0, 0.0)]
    assert scores.seen == [[("", "stop")]]


def test_guided_reports_generation_and_scoring_time_over_all_steps() -> None:
    gen, scores = Script([words("g", 20)], delay_s=0.04), Scores(delay_s=0.04)
    out, wall = _search(_guided(block_tokens=5, top_k=2), _ctx(gen, scores, max_tokens=15))
    assert len(gen.calls) == 3 and len(scores.seen) == 4
    assert 3 * 0.04 <= out.generate_s <= wall
    assert 4 * 0.04 <= out.score_s <= wall


def test_guided_counts_a_missing_score_as_zero() -> None:
    # Equal likelihood: a NaN score must not beat a real one, nor make the choice
    # depend on the order of the proposals.
    for order in ([words("n", 20), words("l", 20)], [words("l", 20), words("n", 20)]):
        gen = Script(order)
        scores = Scores(fixed={"n1": math.nan, "l1": 0.3})
        out, _ = _search(_guided(block_tokens=5, top_k=2), _ctx(gen, scores, max_tokens=5))
        assert out.candidates[0].text == words("l", 5)


class Tokens(Generator):
    """Next-token log-probabilities from a table keyed by the reply so far."""

    name = "tokens"
    capabilities = Capabilities(logprobs=True, token_steps=True)

    def __init__(self, table: dict[str, dict[str, float]]) -> None:
        self.table = table
        self.asked: list[tuple[list[Message], int]] = []

    async def generate(
        self, messages: Sequence[Message], n: int, params: GenerationParams
    ) -> Generation:
        raise AssertionError("token-level guidance only asks for next tokens")

    async def next_token_logprobs(
        self, messages: Sequence[Message], top_k: int = 20
    ) -> dict[str, float]:
        self.asked.append((list(messages), top_k))
        reply = messages[-1].content if messages[-1].role == "assistant" else ""
        return self.table.get(reply, {"": -0.1})


def test_guided_token_level_keeps_the_top_k_most_likely_tokens() -> None:
    # Greedy (weight 0) over the top 2: "a" is likelier than "m"; "z" is cut by top_k
    # although it sorts first by text. Then " b", then the end of the turn ("").
    table = {
        "": {"z": -3.0, "a": -0.1, "m": -0.5},
        "a": {" b": -0.1, "": -2.0},
        "a b": {"": -0.1, " c": -3.0},
    }
    gen = Tokens(table)
    out, _ = _search(_guided(block_tokens=1, top_k=2, weight=0.0), _ctx(gen, Scores()))
    (answer,) = out.candidates
    assert (answer.text, answer.tokens, answer.finish_reason) == ("a b", 2, "stop")
    # The first question is the prompt itself, with no empty assistant turn after it;
    # the next ones continue the reply so far. Each asks for exactly top_k tokens.
    assert [messages for messages, _ in gen.asked] == [
        PROMPT,
        [*PROMPT, Message("assistant", "a")],
        [*PROMPT, Message("assistant", "a b")],
    ]
    assert {k for _, k in gen.asked} == {2}
    assert out.usage == Usage(0, 3)  # one step each; the prompt is not counted per step


def test_guided_scores_each_distinct_continuation_once() -> None:
    # Three samples, the first two identical: both distinct ones are still scored.
    gen, scores = Script([words("g", 20), words("g", 20), words("m", 20)]), Scores()
    _search(_guided(block_tokens=5, top_k=3), _ctx(gen, scores, max_tokens=5))
    assert sorted(text for text, _ in scores.seen[0]) == [words("g", 5), words("m", 5)]


def test_guided_unreported_likelihood_counts_as_certain() -> None:
    # A continuation without a log-probability counts as log-probability 0, no more:
    # against a likely one (-0.2) that scores 0.5 better, it loses.
    class Unreported(Script):
        def _piece(self, row: int, done: list[str], max_tokens: int) -> Candidate:
            piece = super()._piece(row, done, max_tokens)
            return replace(piece, logprob=None if row == 0 else -0.2)

    gen = Unreported([words("b", 20), words("m", 20)])
    out, _ = _search(
        _guided(block_tokens=5, top_k=2, weight=1.0), _ctx(gen, Scores(), max_tokens=5)
    )
    assert out.candidates[0].text == words("m", 5)


def test_guided_keeps_the_tokens_of_an_answer_with_no_text() -> None:
    # Some engines spend tokens that decode to nothing (special tokens): the answer is
    # empty, but its tokens were generated and are reported.
    class Silent(Script):
        async def generate(
            self, messages: Sequence[Message], n: int, params: GenerationParams
        ) -> Generation:
            return Generation([Candidate(text="", tokens=3, finish_reason="stop")] * n, Usage(3, 3))

    out, _ = _search(_guided(block_tokens=5, top_k=2), _ctx(Silent([]), Scores()))
    assert [(c.text, c.tokens) for c in out.candidates] == [("", 3)]


# --- adaptive --------------------------------------------------------------------------


def _scored(*values: float, tokens: int = 10) -> list[Candidate]:
    return [Candidate(text=f"a{i}", tokens=tokens, score=v) for i, v in enumerate(values)]


def test_adaptive_first_round_is_capped_by_n_and_max_candidates() -> None:
    assert Adaptive(Adaptive.Options(first=4)).initial_n(2) == 2
    assert Adaptive(Adaptive.Options(first=4, max_candidates=3)).initial_n(8) == 3
    assert Adaptive(Adaptive.Options(first=2, max_candidates=3)).initial_n(8) == 2
    assert Adaptive(Adaptive.Options(first=4, max_candidates=8)).initial_n(2) == 2


def test_adaptive_grows_within_the_budget_left() -> None:
    strategy = Adaptive(Adaptive.Options(threshold=0.9))
    below = _scored(0.1, 0.2)
    assert strategy.decide(below, RoundState(2 + 6, 6)).more == 2  # grows 2 -> 4
    assert strategy.decide(below, RoundState(2 + 1, 1)).more == 1
    spent = strategy.decide(below, RoundState(2, 0))
    assert spent.more == 0 and spent.best == 1
    assert strategy.decide(_scored(0.1, 0.95), RoundState(2 + 6, 6)).best == 1


def test_adaptive_growth_and_room() -> None:
    # growth 1.5 from one candidate: half a candidate rounds up to one, not two.
    assert (
        Adaptive(Adaptive.Options(threshold=0.9, growth=1.5))
        .decide(_scored(0.1), RoundState(requested=8, budget=8))
        .more
        == 1
    )
    # growth 3 from two: the pool triples to six, four more.
    assert (
        Adaptive(Adaptive.Options(threshold=0.9, growth=3.0))
        .decide(_scored(0.1, 0.2), RoundState(requested=16, budget=16))
        .more
        == 4
    )
    # One slot left below N: one more, not "budget spent".
    last = Adaptive(Adaptive.Options(threshold=0.9)).decide(
        _scored(0.1, 0.2, 0.3), RoundState(requested=4, budget=10)
    )
    assert last.more == 1 and last.best is None


def test_adaptive_time_budget_is_spent_at_exactly_max_seconds() -> None:
    timed = Adaptive(Adaptive.Options(threshold=0.9, max_seconds=1.0))
    at_limit = timed.decide(_scored(0.1, 0.2), RoundState(16, 14, elapsed_s=1.0))
    assert at_limit.more == 0 and at_limit.best == 1


def test_adaptive_token_budget_uses_the_mean_answer_length() -> None:
    # Two 10-token answers of 100 allowed: room for eight more at that length.
    strategy = Adaptive(Adaptive.Options(threshold=0.9, growth=16.0, max_total_tokens=100))
    assert strategy.decide(_scored(0.1, 0.2), RoundState(64, 64)).more == 8
    # Answers of one token: eight tokens left is eight answers.
    tiny = Adaptive(Adaptive.Options(threshold=0.9, growth=16.0, max_total_tokens=10))
    assert tiny.decide(_scored(0.1, 0.2, tokens=1), RoundState(64, 64)).more == 8


# --- the strategy contract -------------------------------------------------------------


class _AsksForBudget(Strategy):
    name = "asks"

    def decide(self, candidates: Sequence[Candidate], state: RoundState) -> Decision:
        return Decision(None, more=state.budget)


def test_the_round_loop_gives_a_strategy_the_requests_budget() -> None:
    rounds = SamplingRounds(_AsksForBudget(), 3, budget=10)
    assert rounds.batch == 3
    rounds.after(_scored(0.1, 0.2, 0.3), 3, 0.0)
    assert rounds.decision.more == 7 and rounds.batch == 7
