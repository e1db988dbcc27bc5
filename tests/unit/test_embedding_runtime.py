"""The relevance scorer's two runtimes: onnx (no torch) by default on the CPU, torch otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aligntime.errors import ConfigError
from aligntime.scorers.embedding import EmbeddingOptions, EmbeddingRelevance
from aligntime.types import Candidate, Message
from hf_tiny import build_bert

PAIRS = Path(__file__).parents[1] / "data" / "pairs.jsonl"


def tiny_bert(folder: Path) -> Path:
    """A randomly initialised one-layer BERT and a 40-word tokenizer, saved as HF does."""
    words = "how do i boil an egg paris is nice the capital of france what a joke".split()  # noqa: SIM905
    return build_bert(folder, words)


def test_onnx_on_a_gpu_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="onnx runtime runs on the CPU"):
        EmbeddingRelevance(EmbeddingOptions(runtime="onnx", device="cuda"))


def test_auto_takes_torch_for_a_folder_without_an_onnx_export(tmp_path: Path) -> None:
    scorer = EmbeddingRelevance(EmbeddingOptions(model=str(tiny_bert(tmp_path / "bert"))))
    assert scorer.runtime == "torch"
    msgs = [Message("user", "how do i boil an egg")]
    values = scorer.score_sync(msgs, [Candidate(text="boil an egg"), Candidate(text="paris")])
    assert len(values) == 2 and all(-1.0 <= v <= 1.0 for v in values)


def test_onnx_without_an_export_names_the_fix(tmp_path: Path) -> None:
    opts = EmbeddingOptions(model=str(tiny_bert(tmp_path / "bert")), runtime="onnx")
    with pytest.raises(ConfigError, match=r"has no model\.onnx") as info:
        EmbeddingRelevance(opts).load()
    assert "runtime: torch" in (info.value.hint or "")


@pytest.mark.slow
def test_the_default_runs_on_onnx_without_torch_and_agrees_with_torch() -> None:
    # In a fresh process: the default embedding scorer must not import torch at all.
    code = (
        "import json, sys; from aligntime.scorers.embedding import EmbeddingRelevance as E; "
        "from aligntime.types import Candidate as C, Message as M; s = E(); "
        "rows = json.load(sys.stdin); "
        "v = [s.score_sync([M('user', r['prompt'])], [C(text=r['good']), C(text=r['bad'])]) "
        "for r in rows]; "
        "print(json.dumps({'runtime': s.runtime, 'values': v, 'torch': 'torch' in sys.modules}))"
    )
    rows = [json.loads(line) for line in PAIRS.read_text("utf-8").splitlines()[:8]]
    proc = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(rows),
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    onnx = json.loads(proc.stdout)
    assert onnx["runtime"] == "onnx" and onnx["torch"] is False
    torch_scorer = EmbeddingRelevance(EmbeddingOptions(runtime="torch"))
    for row, values in zip(rows, onnx["values"], strict=True):
        expected = torch_scorer.score_sync(
            [Message("user", row["prompt"])],
            [Candidate(text=row["good"]), Candidate(text=row["bad"])],
        )
        assert values == pytest.approx(expected, abs=0.01)
