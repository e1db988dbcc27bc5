"""What aligntime wrote, read as one group of scored answers per request."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aligntime.errors import AligntimeError, InputError

Source = Literal["batch", "eval", "audit"]


@dataclass(frozen=True)
class Option:
    """One candidate answer: its text, combined score (None if unscored) and gate verdict."""

    text: str
    score: float | None
    passed: bool
    rated_by: frozenset[str] = field(default_factory=frozenset)
    """Names of the scorers with a value for it (a lazy scorer skips answers that could
    not win: their combined score then counts it as 0, a lower bound)."""


@dataclass(frozen=True)
class Group:
    """One request's conversation, its candidates and the one the policy chose (if any)."""

    messages: list[dict[str, str]]
    options: list[Option]
    chosen: int | None
    where: str
    """File and line (or request id) it came from, for messages."""


def read_groups(kind: Source, path: Path) -> list[Group]:
    """Every request of a batch output file, an ``aligntime eval`` folder or an audit DB."""
    if kind == "batch":
        return _from_batch(path)
    if kind == "eval":
        return _from_eval(path)
    return _from_audit(path)


def _options(candidates: Any, where: str) -> list[Option]:
    if not isinstance(candidates, list):
        raise InputError(f"{where}: 'candidates' must be a list")
    out = []
    for i, c in enumerate(candidates):
        if not isinstance(c, dict) or not isinstance(c.get("text"), str):
            raise InputError(f"{where}: candidates[{i}] has no text")
        score = c.get("score")
        scores = c.get("scores")
        rated = frozenset(scores) if isinstance(scores, dict) else frozenset()
        value = float(score) if score is not None else None
        out.append(Option(c["text"], value, bool(c.get("passed")), rated))
    return out


def _from_batch(path: Path) -> list[Group]:
    from aligntime.batch.output import read_records

    if not path.exists():
        raise InputError(f"batch output {str(path)!r} does not exist")
    groups = []
    for number, record in enumerate(read_records(path), 1):
        where = f"{path} row {record.get('id', number)}"
        if record.get("error") or record.get("refused"):
            continue  # nothing was sampled for it
        groups.append(
            Group(
                record["messages"], _options(record["candidates"], where), record.get("best"), where
            )
        )
    return groups


def _from_eval(folder: Path) -> list[Group]:
    from aligntime.evaluation.runner import RESULTS, load_records

    path = folder / RESULTS
    if not path.is_file():
        raise InputError(
            f"{folder} has no {RESULTS}", hint="give the --out folder of `aligntime eval`"
        )
    groups = []
    for number, record in enumerate(load_records(path), 1):
        where = f"{path}:{number}"
        if not isinstance(record.get("prompt"), str):
            raise InputError(f"{where}: not an `aligntime eval` record (prompt, candidates)")
        options = _options(record.get("candidates"), where)
        # An eval pool was sampled without a strategy: the best-scored eligible answer is
        # what best-of-N would have chosen.
        eligible = [i for i, o in enumerate(options) if o.passed and o.score is not None]
        chosen = max(eligible, key=lambda i: options[i].score or 0.0) if eligible else None
        groups.append(
            Group([{"role": "user", "content": record["prompt"]}], options, chosen, where)
        )
    return groups


def _from_audit(db: Path) -> list[Group]:
    from aligntime.server.audit import read_requests

    try:
        requests = read_requests(db)
    except AligntimeError as exc:
        raise InputError(exc.message, hint=exc.hint) from exc
    groups = []
    for req in requests:
        where = f"{db} request {req['id']}"
        if not req.get("messages"):
            continue
        cands = sorted(req["candidates"], key=lambda c: int(c["idx"]))
        chosen = next((i for i, c in enumerate(cands) if c.get("chosen")), None)
        groups.append(Group(list(req["messages"]), _options(cands, where), chosen, where))
    return groups
