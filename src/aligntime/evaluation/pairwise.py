"""Pairwise accuracy: how often a policy's scorers prefer the better of two answers.

Each pair holds a request, a good answer and a bad one (off-topic, unsafe,
evasive, degenerate or toxic). The policy is right on a pair when the good
answer ranks above the bad one the way a strategy ranks candidates: eligible
(all gates held) before ineligible, then by combined score. A tie counts half.
Each scorer is also measured alone, by its normalised value.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aligntime.errors import InputError
from aligntime.types import Candidate, rank_key


@dataclass(frozen=True)
class Pair:
    """One labelled comparison."""

    id: str
    prompt: str
    good: str
    bad: str
    kind: str
    source: str = ""


@dataclass
class PairwiseReport:
    """Accuracy overall, per kind of bad answer, and per scorer."""

    total: int = 0
    accuracy: float = 0.0
    by_kind: dict[str, float] = field(default_factory=dict)
    by_scorer: dict[str, float] = field(default_factory=dict)
    mistakes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pairs": self.total,
            "accuracy": round(self.accuracy, 4),
            "by_kind": {k: round(v, 4) for k, v in sorted(self.by_kind.items())},
            "by_scorer": {k: round(v, 4) for k, v in sorted(self.by_scorer.items())},
            "mistakes": self.mistakes,
        }


def load_pairs(path: str | Path) -> list[Pair]:
    """Read pairs from a JSONL file (fields: id, prompt, good, bad, kind[, source])."""
    pairs: list[Pair] = []
    with Path(path).open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                pairs.append(
                    Pair(
                        id=str(row.get("id", number)),
                        prompt=row["prompt"],
                        good=row["good"],
                        bad=row["bad"],
                        kind=row.get("kind", "unknown"),
                        source=row.get("source", ""),
                    )
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(f"{path}:{number}: not a valid pair ({exc})") from exc
    return pairs


def _credit(good: Any, bad: Any) -> float:
    return 1.0 if good > bad else 0.5 if good == bad else 0.0


def pairwise_accuracy(
    pairs: Sequence[Pair],
    score: Callable[[str, list[str]], list[Candidate]],
    normalisers: dict[str, Callable[[float], float]] | None = None,
) -> PairwiseReport:
    """Score every pair with ``score(prompt, [good, bad])`` and tally the verdicts.

    ``normalisers`` maps scorer names to functions that put raw values on a
    higher-is-better scale, for the per-scorer figures.
    """
    if not pairs:
        raise InputError("no pairs to evaluate")
    normalisers = normalisers or {}
    overall = 0.0
    kinds: dict[str, list[float]] = defaultdict(list)
    scorers: dict[str, list[float]] = defaultdict(list)
    mistakes: list[str] = []
    for pair in pairs:
        good, bad = score(pair.prompt, [pair.good, pair.bad])
        credit = _credit(rank_key(good), rank_key(bad))
        overall += credit
        kinds[pair.kind].append(credit)
        if credit < 1.0:
            mistakes.append(pair.id)
        for name, norm in normalisers.items():
            if name in good.scores and name in bad.scores:
                scorers[name].append(_credit(norm(good.scores[name]), norm(bad.scores[name])))
    return PairwiseReport(
        total=len(pairs),
        accuracy=overall / len(pairs),
        by_kind={k: sum(v) / len(v) for k, v in kinds.items()},
        by_scorer={k: sum(v) / len(v) for k, v in scorers.items()},
        mistakes=mistakes,
    )
