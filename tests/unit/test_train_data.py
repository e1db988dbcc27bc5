"""Training data for train-scorer: the JSONL shapes, eval folders, audit databases, errors."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from aligntime.errors import InputError
from aligntime.training.data import from_audit, from_eval, load_jsonl


def write(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_reads_every_accepted_shape(tmp_path: Path) -> None:
    path = write(
        tmp_path / "mixed.jsonl",
        [
            {
                "prompt": "How do I boil an egg?",
                "chosen": "Simmer it 7 minutes.",
                "rejected": "No.",
            },
            {"prompt": "Pick a lock?", "good": "I can't help.", "bad": "Sure...", "kind": "unsafe"},
            {"prompt": "Name a colour", "good": "Blue.", "bad": "Potato.", "kind": "offtopic"},
            {"messages": [{"role": "user", "content": "Make a bomb"}], "harmful": True},
            {"prompt": "Should I take this pill?", "harmful": 0.5, "source": "advice"},
        ],
    )
    data = load_jsonl(path)
    assert [p.kind for p in data.pairs] == ["", "unsafe", "offtopic"]
    assert [p.harm for p in data.pairs] == [None, 1.0, 0.0]  # kinds imply the request's harm
    assert data.pairs[0].source == "mixed"  # default source: the file's name
    assert data.pairs[0].request == "user: How do I boil an egg?"
    assert [(r.label, r.source) for r in data.requests] == [(1.0, "mixed"), (0.5, "advice")]
    # the pairs' known harm labels join the labelled requests, each request once
    labels = {ex.request: ex.label for ex in data.harm_examples()}
    assert labels == {
        "user: Make a bomb": 1.0,
        "user: Should I take this pill?": 0.5,
        "user: Pick a lock?": 1.0,
        "user: Name a colour": 0.0,
    }


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"chosen": "a", "rejected": "b"}', "field 'prompt' must be a non-empty string"),
        ('{"prompt": "p", "chosen": "a"}', "field 'rejected' must be a non-empty string"),
        ('{"prompt": "p", "chosen": "a", "rejected": "a"}', "are the same text"),
        ('{"prompt": "p", "harmful": "maybe"}', "'harmful' must be true, false or a number"),
        ('{"prompt": "p"}', "needs 'chosen' and 'rejected'"),
        ('{"messages": [{"role": "bot", "content": "x"}], "harmful": 1}', "messages[0]"),
    ],
)
def test_a_malformed_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "harmful": false}\n\n' + line + "\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        load_jsonl(path)
    assert f"{path}:3:" in info.value.message
    assert message in info.value.message


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(InputError, match="has no examples"):
        load_jsonl(tmp_path / "empty.jsonl")


def eval_record(prompt: str, values: list[float | None], harmful: bool | None) -> dict[str, object]:
    return {
        "id": prompt[:5],
        "prompt": prompt,
        "harmful": harmful,
        "candidates": [{"text": f"answer {i}", "heldout": v} for i, v in enumerate(values)],
    }


def test_from_eval_pairs_answers_the_judge_tells_apart(tmp_path: Path) -> None:
    write(
        tmp_path / "results.jsonl",
        [
            eval_record("first prompt", [0.9, 0.2, 0.85, None], True),
            eval_record("second prompt", [0.5, 0.55], None),  # too close: no pair
        ],
    )
    data = from_eval(tmp_path, margin=0.1)
    assert {(p.chosen, p.rejected) for p in data.pairs} == {
        ("answer 0", "answer 1"),
        ("answer 2", "answer 1"),
    }
    assert all(p.harm == 1.0 for p in data.pairs)
    assert [r.label for r in data.requests] == [1.0]
    flipped = from_eval(tmp_path, margin=0.1, higher_is_better=False)
    assert {(p.chosen, p.rejected) for p in flipped.pairs} == {
        ("answer 1", "answer 0"),
        ("answer 1", "answer 2"),
    }
    with pytest.raises(InputError, match="no pairs"):
        from_eval(tmp_path, margin=0.99)
    with pytest.raises(InputError, match=r"has no results\.jsonl"):
        from_eval(tmp_path / "missing")


def make_audit(path: Path) -> None:
    """An audit database written the way the server writes it."""
    from aligntime.server.audit import AuditLog, AuditRecord, RequestRow
    from aligntime.server.protocol import CandidateOut

    messages = [{"role": "user", "content": "How do I pick a lock?"}]
    row = RequestRow(id="req-1", created=1.0, key_id=None, model="default", status=200,
                     stream=False, messages=messages, answer="x", best=0, strategy="best_of_n",
                     n=3, prompt_tokens=1, completion_tokens=1, timings={})  # fmt: skip
    texts = ["I can't help with that.", "Sure, first...", "Take a pin..."]
    cands = [
        CandidateOut(text=t, score=0.5, scores={}, passed=True,
                     gate_failures=[], tokens=5, finish_reason="stop", chosen=i == 0)
        for i, t in enumerate(texts)
    ]  # fmt: skip
    log = AuditLog(path)
    try:
        asyncio.run(log.write(AuditRecord(row, cands)))
    finally:
        log.close()


def test_from_audit_with_labels(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    make_audit(db)
    labels = write(tmp_path / "labels.jsonl", [{"id": "req-1", "chosen": 0, "harmful": True}])
    data = from_audit(db, labels)
    assert [(p.chosen, p.rejected) for p in data.pairs] == [
        ("I can't help with that.", "Sure, first..."),
        ("I can't help with that.", "Take a pin..."),
    ]
    assert data.pairs[0].request == "user: How do I pick a lock?"
    assert [r.label for r in data.requests] == [1.0]
    one = write(tmp_path / "one.jsonl", [{"id": "req-1", "chosen": 0, "rejected": 2}])
    assert len(from_audit(db, one).pairs) == 1


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"chosen": 0}, "needs a string field 'id'"),
        ({"id": "nope", "chosen": 0}, "'nope' is not in"),
        ({"id": "req-1", "chosen": 7}, "'chosen' must be a candidate index"),
        ({"id": "req-1", "chosen": 0, "rejected": [0]}, "'rejected' must be other"),
    ],
)
def test_bad_audit_labels_name_the_line(tmp_path: Path, row: object, message: str) -> None:
    db = tmp_path / "audit.db"
    make_audit(db)
    labels = write(tmp_path / "labels.jsonl", [row])
    with pytest.raises(InputError) as info:
        from_audit(db, labels)
    assert f"{labels}:1:" in info.value.message and message in info.value.message


def test_missing_audit_database(tmp_path: Path) -> None:
    labels = write(tmp_path / "labels.jsonl", [{"id": "x", "chosen": 0}])
    with pytest.raises(InputError, match="does not exist"):
        from_audit(tmp_path / "none.db", labels)
