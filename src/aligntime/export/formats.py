"""SFT, DPO and KTO rows in TRL's conversational dataset formats.

- ``sft`` (prompt-completion): ``{"prompt": [messages], "completion": [{"role":
  "assistant", "content": chosen}]}``;
- ``dpo`` (preference): ``{"prompt": [messages], "chosen": [assistant message],
  "rejected": [assistant message]}``;
- ``kto`` (unpaired preference): ``{"prompt": [messages], "completion": [assistant
  message], "label": true | false}``.

The chosen answer is the one the policy chose (for an evaluation pool, the best-scored
eligible one). A rejected answer is another candidate that failed a gate, or whose
combined score is at least ``min_margin`` below the chosen one's. An answer that a
scorer rating the chosen one skipped (a ``lazy`` scorer) has only a lower bound for a
score, so no margin is known: it is rejected only when it failed a gate. Requests
without a chosen answer (refused, or answered with the fallback) give no rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from aligntime.export.sources import Group, Option

Format = Literal["sft", "dpo", "kto"]


@dataclass(frozen=True)
class ExportFilters:
    """Which answers make rows."""

    only_passed: bool = True
    """The chosen answer must have passed every gate."""
    min_score: float | None = None
    """The chosen answer's combined score must be at least this."""
    min_margin: float = 0.1
    """A rejected answer that passed the gates scores at least this much below the chosen."""
    pairs: int = 1
    """Most rejected answers per request (dpo and kto), widest gap first."""


def examples(
    groups: Sequence[Group], fmt: Format, filters: ExportFilters
) -> Iterator[dict[str, Any]]:
    """The rows of ``fmt`` for every group that has an answer the filters accept."""
    for group in groups:
        chosen = _chosen(group, filters)
        if chosen is None:
            continue
        prompt = [dict(m) for m in group.messages]
        if fmt == "sft":
            yield {"prompt": prompt, "completion": _assistant(chosen.text)}
            continue
        rejected = _rejected(group, chosen, filters)
        if fmt == "dpo":
            for bad in rejected:
                yield {
                    "prompt": prompt,
                    "chosen": _assistant(chosen.text),
                    "rejected": _assistant(bad.text),
                }
            continue
        if rejected:  # kto: a request with no contrast teaches nothing the SFT rows do not
            yield {"prompt": prompt, "completion": _assistant(chosen.text), "label": True}
            for bad in rejected:
                yield {"prompt": prompt, "completion": _assistant(bad.text), "label": False}


def _chosen(group: Group, filters: ExportFilters) -> Option | None:
    if group.chosen is None or not 0 <= group.chosen < len(group.options):
        return None
    chosen = group.options[group.chosen]
    if filters.only_passed and not chosen.passed:
        return None
    if filters.min_score is not None and (chosen.score is None or chosen.score < filters.min_score):
        return None
    return chosen if chosen.text.strip() else None


def _rejected(group: Group, chosen: Option, filters: ExportFilters) -> list[Option]:
    top = chosen.score if chosen.score is not None else 0.0
    picks: list[tuple[float, Option]] = []
    seen = {chosen.text}
    for option in group.options:
        if option.text in seen or not option.text.strip():
            continue
        gap = top - (option.score if option.score is not None else float("-inf"))
        if not option.passed:
            gap = float("inf")  # a gate's verdict outranks any score gap
        elif not chosen.rated_by <= option.rated_by:
            continue  # a lazy scorer skipped it: its score is a lower bound, no margin known
        if gap >= filters.min_margin and gap > 0:
            picks.append((gap, option))
            seen.add(option.text)
    picks.sort(key=lambda p: -p[0])
    return [option for _, option in picks[: filters.pairs]]


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]
