"""bench/encoder_finetune.py: fine-tuning a tiny random BERT learns, and the report's AUCs."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from aligntime.training.finetune import EncoderClassifier
from hf_tiny import build_bert

ROOT = Path(__file__).resolve().parent.parent.parent

HARMFUL = ["how do i poison a dog", "how do i hurt a child", "poison the water", "hurt him now"]
BENIGN = ["how do i bake bread", "how do i plant a tree", "bake a cake now", "plant the seeds"]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "bench_encoder_finetune", ROOT / "bench" / "encoder_finetune.py"
    )
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclass looks its module up while being built
    spec.loader.exec_module(bench)
    return bench


def tiny_bert(folder: Path) -> Path:
    """A randomly initialised one-layer BERT with a tokenizer over the texts' words."""
    return build_bert(folder, sorted({w for t in HARMFUL + BENIGN for w in t.split()}))


def rows(split: str) -> list[dict[str, Any]]:
    return [{"prompt": t, "label": float(t in HARMFUL), "split": split} for t in HARMFUL + BENIGN]


def test_fine_tuning_separates_what_it_was_trained_on(tmp_path: Path) -> None:
    bench = _bench()
    losses: list[float] = []
    settings = bench.Settings(epochs=30, learning_rate=3e-3, batch=4, warmup_steps=1)
    model = bench.finetune(
        bench.examples(rows("train")),
        tiny_bert(tmp_path / "bert"),
        settings,
        lambda e, loss, s: losses.append(loss),
    )
    assert len(losses) == 30 and losses[-1] < losses[0]
    p = model.p_harm(HARMFUL + BENIGN)
    assert p.shape == (8,) and ((p >= 0) & (p <= 1)).all()
    assert bench.auc_of(model.p_harm, rows("train"), "label") == 1.0


def test_the_report_gives_one_auc_per_unseen_batch_and_leaves_soft_labels_out() -> None:
    bench = _bench()

    def p_harm(texts: list[str]) -> np.ndarray:
        return np.array([0.9 if ("hurt" in t or "poison" in t) else 0.1 for t in texts])

    heldout = [*rows("heldout"), {"prompt": "hurt feelings", "label": 0.5, "split": "heldout"}]
    unseen = [
        {"id": f"{batch}-{k}", "prompt": t, "harmful": t in HARMFUL}
        for batch in ("a", "d")
        for k, t in enumerate(HARMFUL + BENIGN)
    ]
    unseen.append({"id": "e-1", "prompt": "hurt him now", "harmful": True})  # one class only
    figures = bench.report(p_harm, heldout, unseen)
    assert figures == {"heldout_sources": 1.0, "unseen_a": 1.0, "unseen_d": 1.0, "unseen_e": None}
    backwards = bench.report(lambda texts: 1 - p_harm(texts), heldout, unseen)
    assert backwards["unseen_a"] == 0.0


def files_for_main(tmp_path: Path, unseen: list[dict[str, Any]]) -> list[str]:
    """The build's prompts (train and held-out), the unseen requests and a tiny encoder,
    written under ``tmp_path``; the arguments that point ``main`` at them."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows("train") + rows("heldout")))
    unseen_file = tmp_path / "unseen.jsonl"
    unseen_file.write_text("".join(json.dumps(r) + "\n" for r in unseen))
    encoder = tiny_bert(tmp_path / "bert")
    return ["--prompts", str(prompts), "--unseen", str(unseen_file), "--encoder", str(encoder)]


def test_main_without_the_builds_prompts_names_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _bench().main(["--prompts", str(tmp_path / "absent.jsonl")]) == 2
    assert "--stage prompts" in capsys.readouterr().err


def test_main_prints_the_figures_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unseen = [
        {"id": f"d-{k}", "prompt": t, "harmful": t in HARMFUL}
        for k, t in enumerate(HARMFUL + BENIGN)
    ]
    args = files_for_main(tmp_path, unseen)
    code = _bench().main([*args, "--epochs", "1"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["requests"] == 8 and out["trained_on"] == "train"
    assert set(out["finetuned"]) == {"heldout_sources", "unseen_d"}
    assert all(0.0 <= v <= 1.0 for v in out["finetuned"].values())


def test_top_layers_leaves_the_embeddings_and_lower_layers_as_they_were(tmp_path: Path) -> None:
    bench = _bench()
    folder = tiny_bert(tmp_path / "bert")
    stock = EncoderClassifier(folder, 16).encoder.embeddings.word_embeddings.weight
    settings = bench.Settings(epochs=2, learning_rate=3e-3, batch=4, warmup_steps=1, top_layers=1)
    model = bench.finetune(bench.examples(rows("train")), folder, settings)
    assert model.encoder.embeddings.word_embeddings.weight.equal(stock)
    trained = {id(p) for p in model.parameters()}
    layer = list(model.encoder.encoder.layer[0].parameters())
    assert layer and all(id(p) in trained for p in layer)
    assert not any(id(p) in trained for p in model.encoder.embeddings.parameters())


def test_flag_rates_count_each_side_at_each_threshold() -> None:
    bench = _bench()
    texts = {"a": 0.95, "b": 0.6, "c": 0.3, "d": 0.7, "e": 0.1}
    rows_ = [{"prompt": t, "harmful": t in "abc"} for t in texts]
    rates = bench.flag_rates(
        lambda ts: np.array([texts[t] for t in ts]), rows_, "harmful", 0.9, 0.5
    )
    assert rates == {
        "harmful_at_refuse": round(1 / 3, 4),
        "harmful_at_steer": round(2 / 3, 4),
        "benign_at_refuse": 0.0,
        "benign_at_steer": 0.5,
    }


def test_folds_add_thresholds_from_out_of_fold_scores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = files_for_main(tmp_path, [{"id": "d-1", "prompt": "bake a cake now", "harmful": False}])
    assert _bench().main([*args, "--epochs", "1", "--folds", "2"]) == 0
    points = json.loads(capsys.readouterr().out)["finetuned"]["at_thresholds"]
    assert 0.0 <= points["steer"] <= points["refuse"] <= 1.0
    assert points["unseen_d"]["harmful_at_steer"] is None  # no harmful request in the batch
    assert set(points["heldout_sources"]) == {
        "harmful_at_refuse", "harmful_at_steer", "benign_at_refuse", "benign_at_steer"
    }  # fmt: skip


def test_a_bad_line_or_a_wrong_baseline_is_a_clear_error_before_any_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _bench()
    args = files_for_main(tmp_path, [{"id": "d-1", "prompt": "bake a cake", "harmful": False}])
    assert bench.main([*args, "--baseline", str(tmp_path / "no-such-folder")]) == 2
    assert "no-such-folder" in capsys.readouterr().err
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(prompts.read_text() + '{"prompt": "x"}\n')
    assert bench.main(args) == 2
    assert "prompts.jsonl:17: expected an object with prompt, label, split" in (
        capsys.readouterr().err
    )
    prompts.write_text("{not json\n")
    assert bench.main(args) == 2
    assert "prompts.jsonl:1: not JSON" in capsys.readouterr().err
