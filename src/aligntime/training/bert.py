"""A BERT encoder's forward pass in numpy, for the fine-tuned harm head.

The default gate runs without torch. Its fine-tuned harm head (see
:mod:`aligntime.training.tuned_head`) is MiniLM-L6 with its top layers retrained,
so it cannot use the stock int8 ONNX file; this module runs the encoder from its
safetensors weights instead, in float32, with the same arithmetic as transformers'
``BertModel`` (post-LayerNorm blocks, exact-erf GELU, absolute positions). A request
of 30 tokens takes a few milliseconds on one core.

Weights are the Hugging Face names without a ``bert.`` prefix
(``embeddings.word_embeddings.weight``, ``encoder.layer.0.attention.self.query.weight``…).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from aligntime.errors import ConfigError

Weights = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class BertShape:
    """What the forward pass needs to know besides the weights."""

    layers: int
    heads: int
    eps: float = 1e-12


def erf(x: np.ndarray) -> np.ndarray:
    """The error function to within 1.5e-7 (Abramowitz and Stegun 7.1.26); numpy has none
    and scipy is not a dependency of the torch-free gate."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (
        0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))
    )
    out: np.ndarray = sign * (1.0 - poly * np.exp(-a * a))
    return out


def gelu(x: np.ndarray) -> np.ndarray:
    """BERT's GELU, x * Phi(x), with the exact (erf) form transformers uses for ``gelu``."""
    out: np.ndarray = 0.5 * x * (1.0 + erf(x * np.float32(0.7071067811865476)))
    return out.astype(np.float32, copy=False)


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    out: np.ndarray = (x - mean) / np.sqrt(var + eps) * weight + bias
    return out


def _linear(x: np.ndarray, w: Weights, name: str) -> np.ndarray:
    # One 2-D product on a contiguous (in, out) matrix: a 3-D ``x @ weight.T`` is several
    # times slower for the few tokens of a request. :func:`prepare` stores the transposes.
    weight = w.get(f"{name}.weight.T")
    if weight is None:
        weight = w[f"{name}.weight"].T
    flat = x.reshape(-1, x.shape[-1]) @ weight + w[f"{name}.bias"]
    out: np.ndarray = flat.reshape(*x.shape[:-1], flat.shape[-1])
    return out


def prepare(weights: Weights) -> dict[str, np.ndarray]:
    """``weights`` with a contiguous transpose (``<name>.weight.T``) of every dense layer's
    matrix beside it, which :func:`encode` uses."""
    out = dict(weights)
    for name, value in weights.items():
        if name.startswith("encoder.layer.") and name.endswith(".weight") and value.ndim == 2:
            out[f"{name}.T"] = np.ascontiguousarray(value.T, dtype=np.float32)
    return out


def check_weights(weights: Weights, shape: BertShape) -> None:
    """A clear error when ``weights`` lack a tensor the forward pass reads."""
    needed = [
        "embeddings.word_embeddings.weight",
        "embeddings.position_embeddings.weight",
        "embeddings.LayerNorm.weight",
    ]
    for i in range(shape.layers):
        needed += [
            f"encoder.layer.{i}.attention.self.query.weight",
            f"encoder.layer.{i}.output.dense.weight",
        ]
    missing = [name for name in needed if name not in weights]
    if missing:
        raise ConfigError(
            f"the encoder's weights lack {', '.join(missing[:3])}"
            + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""),
            hint="give the safetensors file of a BERT-style encoder (e.g. all-minilm-l6-v2)",
        )


def encode(weights: Weights, shape: BertShape, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The last hidden state, ``(batch, tokens, width)``, of token ``ids`` with an
    ``attention_mask`` of 1 for real tokens and 0 for padding (token types all 0)."""
    w = weights
    positions = np.arange(ids.shape[1])
    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.position_embeddings.weight"][positions]
    )
    if "embeddings.token_type_embeddings.weight" in w:
        x = x + w["embeddings.token_type_embeddings.weight"][0]
    x = layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], shape.eps)
    batch, tokens, width = x.shape
    size = width // shape.heads
    # Padding keys get a large negative score, as transformers' extended attention mask does.
    bias = ((1.0 - mask[:, None, None, :].astype(np.float32)) * np.float32(-1e9)).astype(np.float32)
    scale = np.float32(1.0 / np.sqrt(size))
    for i in range(shape.layers):
        p = f"encoder.layer.{i}."

        def heads(t: np.ndarray) -> np.ndarray:
            return t.reshape(batch, tokens, shape.heads, size).transpose(0, 2, 1, 3)

        q = heads(_linear(x, w, p + "attention.self.query"))
        k = heads(_linear(x, w, p + "attention.self.key"))
        v = heads(_linear(x, w, p + "attention.self.value"))
        scores = q @ k.transpose(0, 1, 3, 2) * scale + bias
        scores -= scores.max(axis=-1, keepdims=True)
        attn = np.exp(scores)
        attn /= attn.sum(axis=-1, keepdims=True)
        context = (attn @ v).transpose(0, 2, 1, 3).reshape(batch, tokens, width)
        x = layer_norm(
            _linear(context, w, p + "attention.output.dense") + x,
            w[p + "attention.output.LayerNorm.weight"],
            w[p + "attention.output.LayerNorm.bias"],
            shape.eps,
        )
        inner = gelu(_linear(x, w, p + "intermediate.dense"))
        x = layer_norm(
            _linear(inner, w, p + "output.dense") + x,
            w[p + "output.LayerNorm.weight"],
            w[p + "output.LayerNorm.bias"],
            shape.eps,
        )
    out: np.ndarray = x.astype(np.float32, copy=False)
    return out


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mean of each row's real tokens, as sentence-transformers pools MiniLM."""
    weights = mask[..., None].astype(np.float32)
    out: np.ndarray = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
    return out
