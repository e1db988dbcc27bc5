"""Reading a guard's verdict from what it generated: P(unsafe) at the verdict token.

A backend returns the guard's greedy continuation of the prompt as steps: the
token chosen at each position and the top-k tokens with their log-probabilities
there. The verdict token is the first non-blank token after the format's marker
(after nothing, for formats that answer with the verdict first; Llama Guard 3
writes a blank line before it). P(unsafe) is the probability of the unsafe words
among the top-k there, normalised over the unsafe and the safe words: the score
the guard models' cards describe, graded rather than a sampled label.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

_PUNCTUATION = ".,:;!'\"`*"


class VerdictError(Exception):
    """The guard's output holds no readable verdict (the guard fails closed on it)."""


@dataclass(frozen=True)
class Step:
    """One generated position: the chosen token and the most likely tokens there."""

    token: str
    """The chosen (greedy) token's text; special tokens read as the empty string."""
    top_fn: Callable[[], dict[str, float]] = field(repr=False, compare=False)
    """Computes token text -> log-probability of the top-k tokens (only where needed)."""

    @cached_property
    def top(self) -> dict[str, float]:
        return self.top_fn()


def fixed_step(token: str, top: dict[str, float]) -> Step:
    """A step whose top-k the backend already has (a served model sends every position's)."""
    return Step(token, lambda: top)


@dataclass(frozen=True)
class Continuation:
    """The guard's greedy continuation of one prompt."""

    steps: Sequence[Step]
    finished: bool
    """True when the model ended its answer within the token budget."""

    @property
    def text(self) -> str:
        return "".join(s.token for s in self.steps)


def verdict_position(steps: Sequence[Step], marker: str) -> int | None:
    """Index of the verdict token: the first non-blank token after ``marker``."""
    seen = ""
    wanted = marker.casefold().strip()
    for index, step in enumerate(steps):
        head = seen.strip().casefold()
        if step.token.strip() and (head.endswith(wanted) if wanted else not head):
            return index
        seen += step.token
    return None


def _matches(token: str, word: str, others: Sequence[str]) -> bool:
    """Whether ``token`` is ``word``, or a start of it (two characters or more) that
    starts no other verdict word: "Cont" for "Controversial", not "S" for "Safe"."""
    text = token.strip().strip(_PUNCTUATION).casefold()
    target = word.casefold()
    if text == target:
        return True
    return (
        len(text) >= 2
        and target.startswith(text)
        and not any(o.casefold().startswith(text) for o in others)
    )


def p_unsafe(top: dict[str, float], unsafe: Sequence[str], safe: Sequence[str]) -> float | None:
    """P(unsafe words) / P(unsafe or safe words) among ``top``; None when neither appears."""
    words = [*unsafe, *safe]
    bad = good = 0.0
    for token, logprob in top.items():
        for word in unsafe:
            if _matches(token, word, [w for w in words if w != word]):
                bad += math.exp(logprob)
                break
        else:
            for word in safe:
                if _matches(token, word, [w for w in words if w != word]):
                    good += math.exp(logprob)
                    break
    if bad + good == 0.0:
        return None
    return bad / (bad + good)


def read_verdict(
    continuation: Continuation, marker: str, unsafe: Sequence[str], safe: Sequence[str]
) -> float:
    """P(unsafe) at the verdict token of ``continuation``; :class:`VerdictError` if none."""
    index = verdict_position(continuation.steps, marker)
    said = continuation.text.strip()[:80]
    if index is None:
        where = f"after {marker!r} " if marker else ""
        raise VerdictError(
            f"its output {said!r} has no verdict {where}within {len(continuation.steps)} tokens"
        )
    top = continuation.steps[index].top
    value = p_unsafe(top, unsafe, safe)
    if value is None:
        seen = ", ".join(repr(t) for t in list(top)[:6])
        raise VerdictError(
            f"none of its verdict words ({'/'.join(unsafe)} or {'/'.join(safe)}) is among "
            f"the {len(top)} most likely tokens at the verdict (those are {seen}; output {said!r})"
        )
    return value
