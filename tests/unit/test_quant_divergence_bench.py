"""bench/quant_divergence.py on a tiny random Llama: the figures, the in-memory requantisation."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from hf_tiny import tiny_lm  # noqa: F401 - fixture

torch = pytest.importorskip("torch")
pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).parents[2]


def _bench() -> ModuleType:
    path = ROOT / "bench" / "quant_divergence.py"
    spec = importlib.util.spec_from_file_location("bench_quant_divergence", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def _model(folder: Path) -> Any:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    # A random tiny model's next-token distributions are nearly flat; sharper ones make
    # the small divergence of 8-bit weights measurable (the same scale for every copy).
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    return model


def test_recorded_answers_follow_the_chat_template(tiny_lm: Path) -> None:  # noqa: F811
    bench = _bench()
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny_lm)
    seqs = bench.answers(tokenizer, 6, 12)
    assert len(seqs) == 6
    for ids, start in seqs:
        assert 0 < start < len(ids) <= start + 12


def test_the_same_weights_diverge_by_nothing_and_fewer_bits_diverge_more(
    tiny_lm: Path,  # noqa: F811
) -> None:
    bench = _bench()
    seqs = [([1, 5, 9, 14, 3, 7, 22, 8], 3), ([2, 4, 6, 8, 10, 12], 2)]
    base = _model(tiny_lm)
    base_lp = bench.log_probs(base, seqs)
    same = bench.compare(base_lp, bench.log_probs(_model(tiny_lm), seqs), seqs)
    assert same["kl"]["mean"] == pytest.approx(0.0, abs=1e-6)
    assert same["top1_agree"] == 1.0
    assert same["nll"]["base"] == same["nll"]["other"]
    assert same["tokens"] == (8 - 3) + (6 - 2)

    figures = {}
    for kind in ("Q8_0", "Q4_0"):
        other = bench.requantised(_model(tiny_lm), kind, list(bench.GROUPS))
        figures[kind] = bench.compare(base_lp, bench.log_probs(other, seqs), seqs)["kl"]["mean"]
    assert 0.0 < figures["Q8_0"] < figures["Q4_0"]


def test_requantising_touches_only_the_named_groups(tiny_lm: Path) -> None:  # noqa: F811
    bench = _bench()
    base = dict(_model(tiny_lm).named_parameters())
    other = bench.requantised(_model(tiny_lm), "Q4_0", ["ffn_gate", "ffn_up"])
    changed = {
        name
        for name, param in other.named_parameters()
        if not torch.equal(param.detach(), base[name].detach())
    }
    assert changed and all("mlp.gate_proj" in n or "mlp.up_proj" in n for n in changed)
    # Every layer's gate and up projections: 2 layers x 2 groups.
    assert len(changed) == 4
