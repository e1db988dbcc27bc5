"""Majority vote (self-consistency): show an answer that most candidates agree on.

For tasks with one short right answer (arithmetic, multiple choice, a name),
sampling several reasoning paths and keeping the most frequent final answer is
more reliable than trusting any single path, and it needs no reward model.
An answer is extracted from each eligible candidate; the biggest group wins and
its best-scored member is shown, so the user sees a full explanation that ends
in the agreed answer.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from typing import Literal

from pydantic import ConfigDict

from aligntime.errors import ConfigError
from aligntime.registry import OptionsModel
from aligntime.strategies.base import Decision, RoundState, Strategy, argmax_score, eligible
from aligntime.types import Candidate, rank_key

ExtractMode = Literal["number", "last_line", "text"]

# A minus sign counts only when it does not follow a word ("5-3" ends in 3, not -3);
# commas count only as thousands separators ("1,2,3" ends in 3).
_NUMBER = re.compile(r"(?:(?<![\w.])-)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|(?<![\w.])\.\d+")


def normalise_number(text: str) -> str | None:
    """Canonical form of a number: no separators, no trailing zeros ("1,000.50" -> "1000.5")."""
    try:
        value = Decimal(text.replace(",", "").strip())
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))  # also turns "-0" into "0"
    return format(value.normalize(), "f")


def normalise_text(text: str) -> str | None:
    """Lower case, punctuation and symbols removed, whitespace collapsed; None if empty.

    A point or comma between digits is kept, so "3.5" does not become "35".
    """
    lowered = text.lower()
    kept: list[str] = []
    for i, ch in enumerate(lowered):
        if unicodedata.category(ch)[0] in "PS":
            between_digits = (
                ch in ".,"
                and 0 < i < len(lowered) - 1
                and lowered[i - 1].isdigit()
                and lowered[i + 1].isdigit()
            )
            kept.append(ch if between_digits else " ")
        else:
            kept.append(ch)
    collapsed = " ".join("".join(kept).split())
    return collapsed or None


def extract_answer(
    text: str, mode: ExtractMode, pattern: str | re.Pattern[str] | None = None
) -> str | None:
    """The final answer a candidate gives, normalised so that equal answers compare equal.

    ``number``: the last number in the text. ``last_line``: the last non-empty
    line. ``text``: the whole text. A ``pattern`` (a regex; its first group, or
    the whole match when it has none) overrides ``mode``: the last match is
    used, normalised as a number when it is one and as text otherwise.
    Returns ``None`` when there is no answer to extract.
    """
    if pattern is not None:
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        matches = list(regex.finditer(text))
        if not matches:
            return None
        last = matches[-1]
        found = last.group(1) if regex.groups else last.group(0)
        if found is None:
            return None
        return (
            normalise_number(found) if _NUMBER.fullmatch(found.strip()) else normalise_text(found)
        )
    if mode == "number":
        numbers = _NUMBER.findall(text)
        return normalise_number(numbers[-1]) if numbers else None
    if mode == "last_line":
        lines = [line for line in text.splitlines() if line.strip()]
        return normalise_text(lines[-1]) if lines else None
    return normalise_text(text)


class VoteOptions(OptionsModel):
    """Options of the ``vote`` strategy."""

    model_config = ConfigDict(extra="forbid")

    extract: ExtractMode = "number"
    """How an answer is read: the last number, the last line, or the whole text."""
    pattern: str | None = None
    """A regex with one group that captures the answer; overrides ``extract``."""


class MajorityVote(Strategy):
    """Pick the best-scored candidate among those whose extracted answer is most common.

    Only eligible candidates with an extractable answer vote. Ties between
    answers go to the group whose best member scores highest, then to the
    answer that appeared first. When nobody votes this is plain best-of-N.
    """

    name = "vote"

    Options = VoteOptions

    def __init__(self, options: VoteOptions | None = None) -> None:
        self.options = options or VoteOptions()
        self._pattern: re.Pattern[str] | None = None
        if self.options.pattern is not None:
            try:
                self._pattern = re.compile(self.options.pattern)
            except re.error as exc:
                raise ConfigError(
                    f"strategy vote: invalid pattern {self.options.pattern!r}: {exc}",
                    hint="give a Python regular expression with one group around the answer",
                ) from exc
            if self._pattern.groups > 1:
                raise ConfigError(
                    f"strategy vote: pattern {self.options.pattern!r} has "
                    f"{self._pattern.groups} groups",
                    hint="use one capturing group around the answer; (?:...) does not capture",
                )

    def decide(self, candidates: Sequence[Candidate], state: RoundState) -> Decision:
        """Choose from the winning answer group; ``None`` when no candidate passed."""
        passed = eligible(candidates)
        if not passed:
            return Decision(None, reason=f"none of {len(candidates)} candidates passed the gates")

        groups: dict[str, list[int]] = {}  # insertion order = first occurrence
        for i in passed:
            answer = extract_answer(candidates[i].text, self.options.extract, self._pattern)
            if answer is not None:
                groups.setdefault(answer, []).append(i)
        if not groups:
            best = argmax_score(candidates, passed)
            return Decision(best, reason="no answer could be extracted; best score wins")

        def rank(item: tuple[str, list[int]]) -> tuple[int, tuple[bool, float]]:
            members = item[1]
            top = argmax_score(candidates, members)
            assert top is not None  # groups are never empty
            return len(members), rank_key(candidates[top])

        # max() keeps the first of equal keys, which is the earliest answer seen.
        answer, members = max(groups.items(), key=rank)
        best = argmax_score(candidates, members)
        voters = sum(len(m) for m in groups.values())
        return Decision(best, reason=f"{len(members)} of {voters} votes for answer {answer!r}")
