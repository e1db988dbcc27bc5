"""Derive another quantisation of a shipped Q4_1 GGUF, for faster CPU kernels.

The package index carries SmolLM2 only as Q4_1, so other layouts are made here:
every Q4_1 tensor is expanded exactly to float32 (Q4_1 is ``d * q + m`` per
block of 32) and quantised again; other tensors (the Q8_0 embeddings, float32
norms) are copied as they are. The ``gguf`` package (the ``embedded`` extra)
reads and writes the file and does the block arithmetic, so the same version
gives the same bytes: the catalogue pins each result's sha256.

- ``q4_1_to_q4_0``: llama.cpp rearranges Q4_0 weights at load time into an
  interleaved layout that its CPU matrix kernels (AVX2, NEON) multiply several
  rows at a time; decoding is much faster, but Q4_0 (``d * (q - 8)``, no offset)
  loses a little precision.
- ``q4_1_to_q8_0``: eight bits per weight hold a Q4_1 block's 16 levels almost
  exactly, and llama.cpp evaluates a long prompt faster on Q8_0 than on Q4_1
  (about 1.5x on 2 AVX-512 cores), while batched decoding is slower. It suits a
  judge, whose work is nearly all prompt evaluation.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from aligntime.errors import ModelError

log = logging.getLogger(__name__)

TARGETS = {"q4_1_to_q4_0": "Q4_0", "q4_1_to_q8_0": "Q8_0"}
"""Derivations a catalogue entry may name, and the quantisation each writes."""
TRANSFORMS = tuple(TARGETS)


def derive(transform: str, source: Path, out: Path) -> None:
    """Write the file ``transform`` makes from ``source`` to ``out``."""
    target = TARGETS.get(transform)
    if target is None:
        raise ModelError(f"unknown model derivation {transform!r}", hint=f"one of {TRANSFORMS}")
    requantise_q4_1(source, out, target)


def q4_1_to_q4_0(source: Path, out: Path) -> None:
    """Requantise every Q4_1 tensor of ``source`` to Q4_0; copy everything else."""
    requantise_q4_1(source, out, "Q4_0")


def requantise_q4_1(source: Path, out: Path, target: str) -> None:
    """Requantise every Q4_1 tensor of ``source`` to ``target`` (``Q4_0`` or ``Q8_0``)."""
    gguf = _gguf()
    kinds = gguf.GGMLQuantizationType
    kind_out = kinds[target]
    file_type = int(gguf.LlamaFileType[f"MOSTLY_{target}"])
    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(out, arch)
    for name, field in reader.fields.items():
        # The GGUF.* entries are the header, which the writer makes itself.
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value: Any = field.contents()
        if name == "general.file_type":
            value = file_type
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(name, value, kind, sub_type=field.types[-1])
        else:
            writer.add_key_value(name, value, kind)
    changed = 0
    for tensor in reader.tensors:
        if tensor.tensor_type == kinds.Q4_1:
            weights = gguf.quants.dequantize(tensor.data, kinds.Q4_1)
            data = gguf.quants.quantize(weights, kind_out)
            writer.add_tensor(tensor.name, data, raw_dtype=kind_out)
            changed += 1
        else:
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    if changed == 0:
        raise ModelError(
            f"{source} has no Q4_1 tensors to requantise",
            hint="this derivation is for a Q4_1 GGUF file",
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    log.info("requantised %d tensors of %s to %s", changed, source.name, target)


def _gguf() -> Any:
    try:
        import gguf
    except ImportError as exc:
        from aligntime.extras import missing

        raise missing("deriving a requantised model", exc, extra="embedded") from exc
    return gguf
