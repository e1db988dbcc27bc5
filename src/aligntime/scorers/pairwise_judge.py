"""An instruction model compares candidates two at a time, in both orders.

For a pair (i, j) the judge model reads the request and two responses labelled
A and B and is asked which is better; its next-token log-probabilities give
P(A) / (P(A) + P(B)). LLM judges favour a position (often the first), so every
pair is asked twice, i as A and then j as A, and the two answers are averaged:
P(i beats j) = (P(A | i first) + 1 - P(A | j first)) / 2. A judge that only
ever prefers one position thus gives 0.5, not a verdict.

A candidate's raw score is its mean probability of winning against the
candidates it met. Small N compares every pair (N(N-1)/2 pairs, 2 prompts
each); above ``max_pairs`` pairs each candidate meets only its next k
neighbours around a circle (k = max_pairs // N), a balanced schedule in which
every candidate plays the same number of comparisons.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Sequence

from pydantic import Field

from aligntime.scorers.base import request_text
from aligntime.scorers.judge import JudgeModelOptions, ModelJudge
from aligntime.types import Candidate, Message

DEFAULT_QUESTION = (
    "Which response answers the request more directly, correctly and helpfully, "
    "without rudeness and without helping anyone cause harm?"
)

SYSTEM = (
    "You are a strict evaluator of assistant responses. You read a user's request and "
    "two responses, A and B, then answer the question with a single letter: A or B."
)


class PairwiseJudgeOptions(JudgeModelOptions):
    """Options of the ``pairwise_judge`` scorer."""

    question: str = DEFAULT_QUESTION
    """The question asked about every pair; it must be answerable with A or B."""
    max_pairs: int = Field(28, ge=1)
    """Most pairs compared per request (each asked in both orders); 28 is every pair of 8."""


class PairwiseJudge(ModelJudge):
    """Mean win probability in 0..1 from pairwise comparisons; higher is better."""

    Options = PairwiseJudgeOptions
    options: PairwiseJudgeOptions
    rates_alone = False  # a win rate depends on the candidates met

    def __init__(
        self, options: PairwiseJudgeOptions | None = None, *, name: str = "pairwise_judge"
    ) -> None:
        self.options = options or PairwiseJudgeOptions()
        super().__init__(self.options, name=name)

    def prompt(self, request: str, first: str, second: str) -> list[Message]:
        """The judge conversation for one ordered pair: ``first`` is A, ``second`` is B."""
        cut = self.options.max_answer_chars
        body = (
            f"Request:\n{request.strip()}\n\n"
            f"Response A:\n{first[:cut].strip() or '(empty)'}\n\n"
            f"Response B:\n{second[:cut].strip() or '(empty)'}\n\n"
            f"Question: {self.options.question}\nAnswer A or B."
        )
        return [Message("system", SYSTEM), Message("user", body)]

    async def score(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        n = len(candidates)
        if n < 2:
            return [0.5] * n
        request = request_text(messages, self.options.max_request_chars)
        pairs = schedule(n, self.options.max_pairs)
        ordered = [(i, j) for i, j in pairs] + [(j, i) for i, j in pairs]
        tops = await asyncio.gather(
            *(
                self.generator.next_token_logprobs(
                    self.prompt(request, candidates[a].text, candidates[b].text),
                    self.options.top_k,
                )
                for a, b in ordered
            )
        )
        first_wins = [p_first(top) for top in tops]
        wins = [0.0] * n
        games = [0] * n
        for k, (i, j) in enumerate(pairs):
            # i was A in the k-th prompt and B in the (k + len(pairs))-th.
            p_i = (first_wins[k] + 1.0 - first_wins[k + len(pairs)]) / 2.0
            wins[i] += p_i
            wins[j] += 1.0 - p_i
            games[i] += 1
            games[j] += 1
        return [w / g if g else 0.5 for w, g in zip(wins, games, strict=True)]


def schedule(n: int, max_pairs: int) -> list[tuple[int, int]]:
    """The unordered pairs (i < j) to compare among ``n`` candidates.

    Every pair when there are at most ``max_pairs``; otherwise each candidate
    against its next k neighbours around a circle, k = max(1, max_pairs // n),
    so every candidate meets 2k others (fewer only when the circle wraps onto
    the same pair).
    """
    every = list(itertools.combinations(range(n), 2))
    if len(every) <= max_pairs:
        return every
    k = max(1, max_pairs // n)
    chosen: set[tuple[int, int]] = set()
    for i in range(n):
        for d in range(1, k + 1):
            j = (i + d) % n
            chosen.add((min(i, j), max(i, j)))
    return sorted(chosen)


def p_first(top_logprobs: dict[str, float]) -> float:
    """P(A) / (P(A) + P(B)) from a token -> log-probability map; 0.5 if neither appears.

    Only the capital letters count (after stripping spaces and punctuation such
    as "(A)" or "A."): a lowercase "a" is more often the article than a verdict.
    """
    a = b = 0.0
    for token, logprob in top_logprobs.items():
        word = token.strip().strip("().,:*\"'")
        if word == "A":
            a += math.exp(logprob)
        elif word == "B":
            b += math.exp(logprob)
    if a + b == 0.0:
        return 0.5
    return a / (a + b)
