"""Derive a Q4_0 GGUF from a shipped Q4_1 one, for llama.cpp's repacked CPU kernels.

llama.cpp rearranges Q4_0 weights at load time into an interleaved layout that
its CPU matrix kernels (AVX2, NEON) multiply several rows at a time, which is
much faster on a CPU than the plain Q4_1 layout of the shipped SmolLM2 file.
No Q4_0 file of that model is on the package index, so it is made here: every
Q4_1 tensor is expanded exactly to float32 (Q4_1 is ``d * q + m`` per block of
32) and quantised again to Q4_0 (``d * (q - 8)``, no offset), which loses a
little precision; other tensors (the Q8_0 embeddings, float32 norms) are
copied as they are. The ``gguf`` package (the ``embedded`` extra) reads and
writes the file and does the block arithmetic, so the same version gives the
same bytes: the catalogue pins the result's sha256.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from aligntime.errors import ModelError

log = logging.getLogger(__name__)

TRANSFORMS = ("q4_1_to_q4_0",)
"""Derivations a catalogue entry may name."""


def derive(transform: str, source: Path, out: Path) -> None:
    """Write the file ``transform`` makes from ``source`` to ``out``."""
    if transform != "q4_1_to_q4_0":
        raise ModelError(f"unknown model derivation {transform!r}", hint=f"one of {TRANSFORMS}")
    q4_1_to_q4_0(source, out)


def q4_1_to_q4_0(source: Path, out: Path) -> None:
    """Requantise every Q4_1 tensor of ``source`` to Q4_0; copy everything else."""
    gguf = _gguf()
    kinds = gguf.GGMLQuantizationType
    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    writer = gguf.GGUFWriter(out, arch)
    for name, field in reader.fields.items():
        # The GGUF.* entries are the header, which the writer makes itself.
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value: Any = field.contents()
        if name == "general.file_type":
            value = int(gguf.LlamaFileType.MOSTLY_Q4_0)
        kind = field.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            writer.add_key_value(name, value, kind, sub_type=field.types[-1])
        else:
            writer.add_key_value(name, value, kind)
    changed = 0
    for tensor in reader.tensors:
        if tensor.tensor_type == kinds.Q4_1:
            weights = gguf.quants.dequantize(tensor.data, kinds.Q4_1)
            data = gguf.quants.quantize(weights, kinds.Q4_0)
            writer.add_tensor(tensor.name, data, raw_dtype=kinds.Q4_0)
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
    log.info("requantised %d tensors of %s to Q4_0", changed, source.name)


def _gguf() -> Any:
    try:
        import gguf
    except ImportError as exc:
        from aligntime.extras import missing

        raise missing("deriving a Q4_0 model", exc, extra="embedded") from exc
    return gguf
