"""Training data for ``aligntime train-scorer``: preference pairs and labelled requests.

Three inputs, each read strictly (a malformed line is an :class:`InputError` that
names the file and line):

- **JSONL files**, one object per line, in any of these shapes:
  ``{"prompt" | "messages", "chosen", "rejected"}`` (a preference pair),
  ``{"prompt", "good", "bad", "kind"}`` (the project's ``pairs.jsonl``; ``kind:
  unsafe`` marks a harmful request, the other kinds a benign one), or
  ``{"prompt" | "messages", "harmful"}`` (a request for the harm head only).
  Optional fields: ``harmful`` (true/false or 0..1), ``source`` (for a split by
  source), ``kind``, ``advice`` (true/false or 0..1: the request needs a qualified
  professional's advice, for the advice head; a row may carry ``advice`` alone).
- **an ``aligntime eval`` folder** (``--from-eval``): its ``results.jsonl`` holds
  every prompt's pool with the held-out judge's value of each candidate; pairs are
  drawn within a prompt wherever the judge's values differ by at least a margin,
  which distils the expensive judge into the cheap scorer.
- **an audit database with a labels file** (``--from-audit DB --labels FILE``):
  each label line names a request id and the candidate a person preferred,
  ``{"id", "chosen": i, "rejected"?: j | [j, ...], "harmful"?: bool}``; without
  ``rejected`` the chosen candidate is preferred to every other one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aligntime.errors import InputError
from aligntime.scorers.base import conversation_text
from aligntime.types import Message

BENIGN_KINDS = frozenset({"offtopic", "evasive", "degenerate", "toxic"})


@dataclass(frozen=True)
class PreferencePair:
    """A conversation and two answers to it, the first preferred."""

    messages: tuple[Message, ...]
    chosen: str
    rejected: str
    source: str = ""
    """Where the pair comes from, for a split by source."""
    harm: float | None = None
    """The request's harmfulness (0..1) when the data says."""
    kind: str = ""
    origin: str = ""
    """``file:line`` (or similar) of the pair, for messages."""

    @property
    def request(self) -> str:
        """The conversation as the heads read it."""
        return conversation_text(self.messages)


@dataclass(frozen=True)
class HarmExample:
    """A conversation labelled with P(harmful) (0, 1, or soft in between)."""

    messages: tuple[Message, ...]
    label: float
    source: str = ""
    origin: str = ""

    @property
    def request(self) -> str:
        return conversation_text(self.messages)


@dataclass
class Dataset:
    """What a training run reads."""

    pairs: list[PreferencePair]
    requests: list[HarmExample]
    advice: list[HarmExample] = field(default_factory=list)
    """Requests labelled for the advice head: ``label`` is P(needs a qualified
    professional), not P(harmful); kept apart so the harm head never reads them."""

    def extend(self, other: Dataset) -> None:
        self.pairs.extend(other.pairs)
        self.requests.extend(other.requests)
        self.advice.extend(other.advice)

    def harm_examples(self) -> list[HarmExample]:
        """Labelled requests, plus the request of every pair whose harm is known (deduplicated)."""
        seen: set[str] = set()
        out: list[HarmExample] = []
        for ex in self.requests:
            if ex.request not in seen:
                seen.add(ex.request)
                out.append(ex)
        for pair in self.pairs:
            if pair.harm is not None and pair.request not in seen:
                seen.add(pair.request)
                out.append(HarmExample(pair.messages, pair.harm, pair.source, pair.origin))
        return out


def _text(row: dict[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where}: field {key!r} must be a non-empty string")
    return value


def _harm(value: Any, where: str, name: str = "harmful") -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and 0.0 <= float(value) <= 1.0:
        return float(value)
    raise InputError(f"{where}: field {name!r} must be true, false or a number in 0..1")


def _messages(row: dict[str, Any], where: str) -> tuple[Message, ...]:
    if "messages" in row:
        raw = row["messages"]
        if not isinstance(raw, list) or not raw:
            raise InputError(f"{where}: field 'messages' must be a non-empty list")
        out = []
        for i, m in enumerate(raw):
            if (
                not isinstance(m, dict)
                or m.get("role") not in ("system", "user", "assistant")
                or not isinstance(m.get("content"), str)
            ):
                raise InputError(
                    f"{where}: messages[{i}] needs a role (system, user or assistant) "
                    "and a string content"
                )
            out.append(Message(m["role"], m["content"]))
        if not any(m.role == "user" and m.content.strip() for m in out):
            raise InputError(f"{where}: 'messages' has no non-empty user turn")
        return tuple(out)
    return (Message("user", _text(row, "prompt", where)),)


def parse_row(row: Any, where: str, default_source: str) -> PreferencePair | HarmExample:
    """One JSONL object as a pair or a labelled request (see the module docstring)."""
    if not isinstance(row, dict):
        raise InputError(f"{where}: expected a JSON object")
    messages = _messages(row, where)
    source = str(row.get("source") or default_source)
    kind = str(row.get("kind") or "")
    harm = _harm(row.get("harmful"), where)
    if harm is None and kind == "unsafe":
        harm = 1.0
    elif harm is None and kind in BENIGN_KINDS:
        harm = 0.0
    if "chosen" in row or "rejected" in row:
        chosen, rejected = _text(row, "chosen", where), _text(row, "rejected", where)
    elif "good" in row or "bad" in row:
        chosen, rejected = _text(row, "good", where), _text(row, "bad", where)
    elif harm is not None:
        return HarmExample(messages, harm, source, where)
    else:
        raise InputError(
            f"{where}: needs 'chosen' and 'rejected' (or 'good' and 'bad'), or 'harmful'",
            hint="see `aligntime train-scorer --help` for the accepted shapes",
        )
    if chosen == rejected:
        raise InputError(f"{where}: the chosen and rejected answers are the same text")
    return PreferencePair(messages, chosen, rejected, source, harm, kind, where)


def load_jsonl(path: Path) -> Dataset:
    """Read a training JSONL file; the first bad line raises an error naming it."""
    if not path.is_file():
        raise InputError(f"training file {str(path)!r} does not exist")
    data = Dataset([], [])
    for where, row in _json_rows(path):
        if isinstance(row, dict) and "advice" in row:
            label = _harm(row["advice"], where, "advice")
            source = str(row.get("source") or path.stem)
            if label is not None:
                data.advice.append(HarmExample(_messages(row, where), label, source, where))
            if not ({"chosen", "rejected", "good", "bad", "harmful", "kind"} & row.keys()):
                continue
        item = parse_row(row, where, path.stem)
        if isinstance(item, PreferencePair):
            data.pairs.append(item)
        else:
            data.requests.append(item)
    if not data.pairs and not data.requests and not data.advice:
        raise InputError(f"training file {str(path)!r} has no examples")
    return data


def _json_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """Each non-blank line of a JSONL file, parsed, with ``file:line`` for error messages."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc})") from exc
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            yield where, json.loads(line)
        except ValueError as exc:
            raise InputError(f"{where}: not valid JSON ({exc})") from exc


def from_eval(
    folder: Path, *, margin: float = 0.1, per_prompt: int = 8, higher_is_better: bool = True
) -> Dataset:
    """Pairs from an ``aligntime eval`` folder, labelled by the held-out judge's values.

    Within each prompt's pool, every two answers whose held-out values differ by at
    least ``margin`` make a pair (the better one chosen); the ``per_prompt`` pairs
    with the widest gaps are kept. ``higher_is_better`` is False when the held-out
    scorer rates harm (lower better).
    """
    from aligntime.evaluation.runner import RESULTS, load_records

    path = folder / RESULTS
    if not path.is_file():
        raise InputError(
            f"{folder} has no {RESULTS}", hint="give the --out folder of an `aligntime eval` run"
        )
    data = from_records(
        load_records(path),
        str(path),
        margin=margin,
        per_prompt=per_prompt,
        higher_is_better=higher_is_better,
    )
    if not data.pairs:
        raise InputError(
            f"{path}: no pairs: no prompt has held-out values that differ by {margin} or more",
            hint="run `aligntime eval` with a held-out scorer (not --heldout none), "
            "or lower --margin",
        )
    return data


def from_records(
    records: list[dict[str, Any]],
    name: str,
    *,
    margin: float = 0.1,
    per_prompt: int = 8,
    higher_is_better: bool = True,
    source_prefix: str = "",
) -> Dataset:
    """Pairs (and labelled requests) from ``aligntime eval`` records, as :func:`from_eval`
    reads them; ``name`` names the file in messages, ``source_prefix`` starts every
    pair's source (the record's category, else its id)."""
    data = Dataset([], [])
    sign = 1.0 if higher_is_better else -1.0
    for number, rec in enumerate(records, 1):
        where = f"{name}:{number}"
        cands = rec.get("candidates")
        prompt = rec.get("prompt")
        if not isinstance(cands, list) or not isinstance(prompt, str):
            raise InputError(f"{where}: not an `aligntime eval` record (prompt, candidates)")
        scored = [
            (float(c["heldout"]), str(c["text"]))
            for c in cands
            if isinstance(c, dict) and c.get("heldout") is not None and str(c.get("text", ""))
        ]
        options = [
            (sign * (a - b), ta, tb)
            for a, ta in scored
            for b, tb in scored
            if sign * (a - b) >= margin and ta != tb
        ]
        options.sort(key=lambda o: -o[0])
        harm = _harm(rec.get("harmful"), where)
        messages = (Message("user", prompt),)
        source = source_prefix + str(rec.get("category") or rec.get("id") or "eval")
        for _, good, bad in options[:per_prompt]:
            data.pairs.append(PreferencePair(messages, good, bad, source, harm, "", where))
        if harm is not None:
            data.requests.append(HarmExample(messages, harm, source, where))
    return data


def from_audit(db: Path, labels: Path) -> Dataset:
    """Pairs from an audit database, labelled by a labels file (see the module docstring)."""
    from aligntime.errors import AligntimeError
    from aligntime.server.audit import read_requests

    try:
        requests = {r["id"]: r for r in read_requests(db)}
    except AligntimeError as exc:
        raise InputError(exc.message, hint=exc.hint) from exc
    if not labels.is_file():
        raise InputError(f"labels file {str(labels)!r} does not exist")
    data = Dataset([], [])
    for where, row in _json_rows(labels):
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            raise InputError(f"{where}: needs a string field 'id' (an audited request id)")
        req = requests.get(row["id"])
        if req is None:
            raise InputError(f"{where}: request id {row['id']!r} is not in {db}")
        texts = {int(c["idx"]): str(c["text"]) for c in req["candidates"]}
        chosen = row.get("chosen")
        if not isinstance(chosen, int) or chosen not in texts:
            raise InputError(
                f"{where}: 'chosen' must be a candidate index of that request "
                f"({', '.join(map(str, sorted(texts))) or 'it has none'})"
            )
        rejected = row.get("rejected", [i for i in texts if i != chosen])
        rejected = [rejected] if isinstance(rejected, int) else rejected
        if not isinstance(rejected, list) or any(
            not isinstance(i, int) or i not in texts or i == chosen for i in rejected
        ):
            raise InputError(f"{where}: 'rejected' must be other candidate indices of the request")
        messages = _messages({"messages": req["messages"]}, f"{db} request {row['id']}")
        harm = _harm(row.get("harmful"), where)
        for i in rejected:
            if texts[i] != texts[chosen]:
                data.pairs.append(
                    PreferencePair(messages, texts[chosen], texts[i], "audit", harm, "", where)
                )
        if harm is not None:
            data.requests.append(HarmExample(messages, harm, "audit", where))
    if not data.pairs:
        raise InputError(f"{labels}: no labelled pairs")
    return data
