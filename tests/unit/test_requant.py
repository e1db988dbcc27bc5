"""Deriving Q4_0 and Q8_0 GGUFs from a Q4_1 one, alone and through the model store."""

from __future__ import annotations

import hashlib
from pathlib import Path

import gguf
import numpy as np
import pytest

from aligntime.errors import ModelError
from aligntime.models import catalog, store
from aligntime.models.catalog import ModelSpec
from aligntime.models.requant import derive, q4_1_to_q4_0

Q = gguf.GGMLQuantizationType


def tiny_q4_1(path: Path) -> np.ndarray:
    """A small llama-shaped GGUF: one Q4_1 matrix, one float32 vector, some metadata."""
    rng = np.random.default_rng(0)
    weights = rng.normal(0, 0.05, size=(8, 64)).astype(np.float32)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(1)
    writer.add_file_type(int(gguf.LlamaFileType.MOSTLY_Q4_1))
    writer.add_token_list(["<s>", "a", "b"])
    writer.add_tensor(
        "blk.0.ffn_up.weight", gguf.quants.quantize(weights, Q.Q4_1), raw_dtype=Q.Q4_1
    )
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(64, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return weights


def test_q4_1_tensors_become_q4_0_and_the_rest_is_kept(tmp_path: Path) -> None:
    weights = tiny_q4_1(tmp_path / "in.gguf")
    q4_1_to_q4_0(tmp_path / "in.gguf", tmp_path / "out.gguf")
    before = gguf.GGUFReader(tmp_path / "in.gguf")
    after = gguf.GGUFReader(tmp_path / "out.gguf")
    kinds = {t.name: t.tensor_type for t in after.tensors}
    assert kinds == {"blk.0.ffn_up.weight": Q.Q4_0, "blk.0.attn_norm.weight": Q.F32}
    assert after.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q4_0)
    assert after.fields["tokenizer.ggml.tokens"].contents() == ["<s>", "a", "b"]
    assert after.fields["llama.block_count"].contents() == 1
    old = gguf.quants.dequantize(before.tensors[0].data, Q.Q4_1)
    new = gguf.quants.dequantize(after.tensors[0].data, Q.Q4_0)
    assert new.shape == old.shape == weights.shape
    # Lossy, but within a 4-bit step of the block's range.
    step = np.abs(weights).max() / 7
    assert np.abs(new - old).max() <= step
    assert not np.array_equal(new, old)
    np.testing.assert_array_equal(after.tensors[1].data, np.ones(64, dtype=np.float32))
    # The same input gives the same bytes (the catalogue pins a sha256).
    q4_1_to_q4_0(tmp_path / "in.gguf", tmp_path / "again.gguf")
    assert (tmp_path / "again.gguf").read_bytes() == (tmp_path / "out.gguf").read_bytes()


def test_q4_1_to_q8_0_keeps_the_weights_almost_exactly(tmp_path: Path) -> None:
    weights = tiny_q4_1(tmp_path / "in.gguf")
    derive("q4_1_to_q8_0", tmp_path / "in.gguf", tmp_path / "q8.gguf")
    before = gguf.GGUFReader(tmp_path / "in.gguf")
    after = gguf.GGUFReader(tmp_path / "q8.gguf")
    assert [t.tensor_type for t in after.tensors] == [Q.Q8_0, Q.F32]
    assert after.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    old = gguf.quants.dequantize(before.tensors[0].data, Q.Q4_1)
    new = gguf.quants.dequantize(after.tensors[0].data, Q.Q8_0)
    assert new.shape == weights.shape
    # Within one 8-bit step of each block's largest weight (the step's scale is stored as
    # float16): far finer than Q4_1's own step, which makes the file a stand-in for it.
    blocks = np.abs(old.reshape(-1, 32)).max(axis=1, keepdims=True)
    assert (np.abs(new - old).reshape(-1, 32) <= blocks / 127).all()
    q4_1_step = (np.ptp(weights.reshape(-1, 32), axis=1) / 15).min()
    assert np.abs(new - old).max() < q4_1_step / 4


def test_a_file_without_q4_1_tensors_is_refused(tmp_path: Path) -> None:
    tiny_q4_1(tmp_path / "in.gguf")
    q4_1_to_q4_0(tmp_path / "in.gguf", tmp_path / "q4_0.gguf")
    with pytest.raises(ModelError, match="no Q4_1 tensors"):
        q4_1_to_q4_0(tmp_path / "q4_0.gguf", tmp_path / "twice.gguf")
    with pytest.raises(ModelError, match="unknown model derivation"):
        derive("q8_to_q2", tmp_path / "in.gguf", tmp_path / "x.gguf")


def derived_specs(base_file: Path, sha: str) -> tuple[ModelSpec, ModelSpec]:
    base = ModelSpec(
        name="tiny-q4_1",
        format="gguf",
        description="test",
        licence="MIT",
        sources=(),
        sha256=hashlib.sha256(base_file.read_bytes()).hexdigest(),
        filename="tiny.Q4_1.gguf",
    )
    derived = ModelSpec(
        name="tiny-q4_0",
        format="gguf",
        description="test",
        licence="MIT",
        sources=(),
        sha256=sha,
        filename="tiny.Q4_0.gguf",
        derived_from="tiny-q4_1",
        transform="q4_1_to_q4_0",
    )
    return base, derived


def test_store_pulls_a_derived_model_from_its_base(
    monkeypatch: pytest.MonkeyPatch, isolated_cache: Path, tmp_path: Path
) -> None:
    tiny_q4_1(tmp_path / "in.gguf")
    q4_1_to_q4_0(tmp_path / "in.gguf", tmp_path / "expected.gguf")
    sha = hashlib.sha256((tmp_path / "expected.gguf").read_bytes()).hexdigest()
    base, derived = derived_specs(tmp_path / "in.gguf", sha)
    for spec in (base, derived):
        monkeypatch.setitem(catalog.CATALOG, spec.name, spec)
    # The base is already in the cache (pulled earlier), so nothing is downloaded.
    base_path = store.model_path(base)
    base_path.parent.mkdir(parents=True)
    base_path.write_bytes((tmp_path / "in.gguf").read_bytes())

    path = store.resolve("tiny-q4_0")
    assert path == store.model_path(derived)
    assert path.read_bytes() == (tmp_path / "expected.gguf").read_bytes()
    assert store.is_pulled("tiny-q4_0")

    _, bad = derived_specs(tmp_path / "in.gguf", "0" * 64)
    monkeypatch.setitem(catalog.CATALOG, bad.name, bad)
    with pytest.raises(ModelError, match="does not match its sha256"):
        store.pull_model("tiny-q4_0", force=True)
