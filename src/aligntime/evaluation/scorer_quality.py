"""How good are a policy's scorers? Pairwise accuracy, ROC AUC and Spearman on labelled data.

Two kinds of data file:

- **pairs** (JSONL with ``prompt``, ``good``, ``bad``; see ``tests/data/PAIRS.md``):
  pairwise accuracy (the good answer ranks above the bad one; ties half), per
  scorer and for the policy's ranking (gates first, then combined score), and
  ROC AUC with every good answer a positive and every bad one a negative;
- **graded responses** (CSV with a header, or JSONL, with ``prompt``,
  ``response``, ``label``): ROC AUC when the labels are binary (0/1,
  true/false, good/bad), Spearman's rank correlation of score against label
  always, and pairwise accuracy over pairs of responses to the same prompt
  with different labels.

Every scorer is read on its normalised scale (1 best), so lower-is-better
scorers such as a toxicity probability are measured the right way round.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aligntime.errors import InputError
from aligntime.evaluation.metrics import auc, credit, spearman
from aligntime.evaluation.pairwise import Pair, load_pairs, pairwise_accuracy
from aligntime.types import Candidate

COMBINED = "combined"
ScoreFn = Callable[[str, list[str]], list[Candidate]]
_TRUE = {"1", "true", "yes", "good", "pos", "positive"}
_FALSE = {"0", "false", "no", "bad", "neg", "negative"}


@dataclass(frozen=True)
class Graded:
    """One response with a label: binary (1 good, 0 bad) or a grade (higher is better)."""

    prompt: str
    response: str
    label: float


def rank_value(c: Candidate) -> float:
    """The policy's ranking as one number: eligible answers above ineligible, then score."""
    return (2.0 if c.passed else 0.0) + (c.score if c.score is not None else -1.0)


def load_data(path: str | Path) -> list[Pair] | list[Graded]:
    """Read pairs or graded responses, telling them apart by their fields."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"data file {str(p)!r} does not exist")
    if p.suffix.lower() == ".csv":
        with p.open(encoding="utf-8", newline="") as fh:
            return _graded(list(csv.DictReader(fh)), p)
    rows = []
    # JSON lines end at "\n" only: a string may hold U+2028, which splitlines would cut at.
    for number, line in enumerate(p.read_text(encoding="utf-8").split("\n"), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                raise InputError(f"{p}:{number}: not valid JSON ({exc})") from exc
    if not rows:
        raise InputError(f"data file {str(p)!r} is empty")
    if isinstance(rows[0], dict) and "good" in rows[0] and "bad" in rows[0]:
        return load_pairs(p)
    return _graded(rows, p)


def _graded(rows: Sequence[Any], path: Path) -> list[Graded]:
    items = []
    for number, row in enumerate(rows, 1):
        where = f"{path}: row {number}"
        if not isinstance(row, dict):
            raise InputError(f"{where}: not an object")
        missing = [k for k in ("prompt", "response", "label") if row.get(k) in (None, "")]
        if missing:
            raise InputError(
                f"{where}: missing field(s) {', '.join(missing)}",
                hint="graded data needs prompt, response and label; pairs need prompt, good, bad",
            )
        items.append(Graded(str(row["prompt"]), str(row["response"]), _label(row["label"], where)))
    if not items:
        raise InputError(f"data file {str(path)!r} has no rows")
    return items


def _label(value: Any, where: str) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    text = str(value).strip().lower()
    if text in _TRUE:
        return 1.0
    if text in _FALSE:
        return 0.0
    try:
        return float(text)
    except ValueError:
        raise InputError(
            f"{where}: label {value!r} is not a number or true/false", hint="use 0/1 or a grade"
        ) from None


def evaluate_pairs(
    pairs: Sequence[Pair], score: ScoreFn, normalisers: dict[str, Callable[[float], float]]
) -> dict[str, Any]:
    """Pairwise accuracy (via :func:`pairwise_accuracy`) and pooled AUC per scorer."""
    scored: list[tuple[Candidate, Candidate]] = []

    def recording(prompt: str, answers: list[str]) -> list[Candidate]:
        good, bad = score(prompt, answers)
        scored.append((good, bad))
        return [good, bad]

    report = pairwise_accuracy(pairs, recording, normalisers)
    scorers: dict[str, dict[str, Any]] = {}
    for name, norm in normalisers.items():
        goods = [norm(g.scores[name]) for g, b in scored if name in g.scores and name in b.scores]
        bads = [norm(b.scores[name]) for g, b in scored if name in g.scores and name in b.scores]
        scorers[name] = {
            "pairwise_accuracy": report.by_scorer.get(name),
            "auc": auc(goods, bads),
            "items": len(goods),
        }
    scorers[COMBINED] = {
        "pairwise_accuracy": report.accuracy,
        "auc": auc([rank_value(g) for g, _ in scored], [rank_value(b) for _, b in scored]),
        "items": len(scored),
    }
    return {
        "kind": "pairs",
        "items": len(pairs),
        "scorers": scorers,
        "by_kind": report.by_kind,
        "mistakes": report.mistakes,
    }


def evaluate_graded(
    items: Sequence[Graded], score: ScoreFn, normalisers: dict[str, Callable[[float], float]]
) -> dict[str, Any]:
    """AUC (binary labels), Spearman and within-prompt pairwise accuracy per scorer."""
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.prompt, []).append(i)
    candidates: list[Candidate | None] = [None] * len(items)
    for prompt, members in groups.items():
        for i, cand in zip(
            members, score(prompt, [items[i].response for i in members]), strict=True
        ):
            candidates[i] = cand
    scored = [c for c in candidates if c is not None]
    labels = [item.label for item in items]
    binary = set(labels) <= {0.0, 1.0}
    values: dict[str, list[float]] = {COMBINED: [rank_value(c) for c in scored]}
    for name, norm in normalisers.items():
        values[name] = [norm(c.scores.get(name, float("nan"))) for c in scored]
    scorers = {}
    for name, xs in values.items():
        pos = [x for x, y in zip(xs, labels, strict=True) if y == 1.0]
        neg = [x for x, y in zip(xs, labels, strict=True) if y == 0.0]
        scorers[name] = {
            "pairwise_accuracy": _within_prompt_accuracy(xs, labels, groups),
            "auc": auc(pos, neg) if binary else None,
            "spearman": spearman(xs, labels),
            "items": len(xs),
        }
    return {"kind": "graded", "items": len(items), "binary": binary, "scorers": scorers}


def _within_prompt_accuracy(
    xs: Sequence[float], labels: Sequence[float], groups: dict[str, list[int]]
) -> float | None:
    credits = []
    for members in groups.values():
        for a in members:
            for b in members:
                if labels[a] > labels[b]:
                    credits.append(credit(xs[a], xs[b]))
    return sum(credits) / len(credits) if credits else None
