"""A harm head on a fine-tuned encoder, run without torch.

The frozen-embedding harm head learns a request's topic more than its intent: a
request rated 0.3-0.6 is answered and a benign one that names a dangerous thing is
steered (see the README's section on unseen requests). Retraining the encoder's top
layers separates the two much better. This head is that model at run time: the stock
MiniLM-L6 weights (the catalogue's ``all-minilm-l6-v2``, checked against the sha256
the folder records), the retrained layers stored as int8 differences from them (about
3.5 MB for two layers), and a linear layer over the scaled, unit-length mean-pooled
output. The forward pass is :mod:`aligntime.training.bert`, in numpy.

Texts longer than ``max_length`` tokens keep their end (left truncation): the gate
reads the whole conversation, and the newest turn must not be the part cut off.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from aligntime.errors import ConfigError
from aligntime.training.bert import BertShape, check_weights, encode, mean_pool, prepare
from aligntime.training.heads import sigmoid

PREFIX = "encoder."
"""Tensors of the retrained layers, under ``harm.`` in the folder's safetensors."""
SCALE = 10.0
"""The unit-length pooled vector is multiplied by this before the linear layer (as in
training), so the head reaches confident logits with small weights."""
BATCH = 16


def _chunks(order: Sequence[int], texts: Sequence[str]) -> list[list[int]]:
    """``order`` (indices of ``texts``, shortest first) cut into batches of at most
    ``BATCH`` texts of similar length: every text of a batch is padded to its longest, and
    the cost of the forward pass grows with the padded length (the gate's views of one
    conversation are a long text and short ones)."""
    chunks: list[list[int]] = []
    for i in order:
        if (
            chunks
            and len(chunks[-1]) < BATCH
            and len(texts[i]) <= 1.5 * len(texts[chunks[-1][0]]) + 40
        ):
            chunks[-1].append(i)
        else:
            chunks.append([i])
    return chunks


def quantise_delta(tuned: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``tuned - base`` as int8 with one float32 scale per output row."""
    delta = (tuned.astype(np.float32) - base.astype(np.float32)).reshape(tuned.shape[0], -1)
    scale = np.abs(delta).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(delta / scale[:, None]), -127, 127).astype(np.int8)
    return q.reshape(tuned.shape), scale.astype(np.float32)


def pack(
    tuned: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray], w: np.ndarray, b: float
) -> dict[str, np.ndarray]:
    """The tensors a folder stores for a tuned head: matrices as int8 differences from
    ``base`` (``<name>.dq`` and ``<name>.ds``), vectors (biases, LayerNorms) whole, and the
    linear layer (``w``, ``b``)."""
    out: dict[str, np.ndarray] = {
        "w": np.asarray(w, np.float32).reshape(-1),
        "b": np.array([b], np.float32),
    }
    for name, value in tuned.items():
        if name not in base:
            raise ConfigError(f"the tuned tensor {name!r} is not in the base encoder")
        if value.ndim == 2:
            q, s = quantise_delta(value, base[name])
            out[f"{PREFIX}{name}.dq"], out[f"{PREFIX}{name}.ds"] = q, s
        else:
            out[f"{PREFIX}{name}"] = np.asarray(value, np.float32)
    return out


def unpack(
    params: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The encoder's weights: ``base`` with the stored layers put back."""
    weights = dict(base)
    for key, value in params.items():
        if not key.startswith(PREFIX) or key.endswith(".ds"):
            continue
        name = key[len(PREFIX) :]
        if name.endswith(".dq"):
            name = name[:-3]
            scale = params.get(f"{PREFIX}{name}.ds")
            if name not in base or scale is None or base[name].shape != value.shape:
                raise ConfigError(f"the tuned harm head's {name!r} does not fit the base encoder")
            weights[name] = base[name] + value.astype(np.float32) * scale[:, None]
        else:
            if name not in base or base[name].shape != value.shape:
                raise ConfigError(f"the tuned harm head's {name!r} does not fit the base encoder")
            weights[name] = value.astype(np.float32)
    return weights


class TunedHarmHead:
    """P(harmful) of texts from a fine-tuned encoder (see the module docstring).

    ``config`` is the harm section's ``tuned`` entry: ``base`` (catalogue name or folder
    of the stock encoder), ``base_sha256`` (of its ``model.safetensors``), ``layers``,
    ``heads`` and ``max_length``. The base is read on the first call.
    """

    def __init__(self, params: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> None:
        for key in ("base", "base_sha256", "layers", "heads"):
            if key not in config:
                raise ConfigError(f"the tuned harm head's config has no {key!r}")
        if "w" not in params or "b" not in params:
            raise ConfigError("the tuned harm head has no linear layer (harm.w, harm.b)")
        self.params = dict(params)
        self.config = dict(config)
        self.shape = BertShape(int(config["layers"]), int(config["heads"]))
        self.max_length = int(config.get("max_length", 256))
        self._weights: dict[str, np.ndarray] | None = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Resolve (pulling if needed) and check the base encoder, and merge the layers
        (once; thread-safe)."""
        with self._lock:
            if self._weights is None:
                self._load()

    def _load(self) -> None:
        try:
            from safetensors.numpy import load_file
            from tokenizers import Tokenizer
        except ImportError as exc:
            from aligntime.extras import missing

            raise missing("the tuned harm head", exc, extra="embedded") from exc
        from aligntime.models import store

        folder = store.resolve(str(self.config["base"]))
        if folder.is_file():
            folder = folder.parent
        weights_file, tokenizer_file = folder / "model.safetensors", folder / "tokenizer.json"
        for path in (weights_file, tokenizer_file):
            if not path.is_file():
                raise ConfigError(
                    f"the tuned harm head's base encoder has no {path.name} at {folder}",
                    hint=f"pull it with `aligntime models pull {self.config['base']}`",
                )
        if store.file_sha256(weights_file) != self.config["base_sha256"]:
            raise ConfigError(
                f"{weights_file} is not the encoder the harm head was tuned from (sha256 differs)",
                hint=f"pull it again with `aligntime models pull {self.config['base']} --force`",
            )
        base = load_file(str(weights_file))
        check_weights(base, self.shape)
        tok = Tokenizer.from_file(str(tokenizer_file))
        pad = tok.token_to_id("[PAD]")
        tok.enable_truncation(max_length=self.max_length, direction="left")
        tok.enable_padding(pad_id=0 if pad is None else pad, pad_token="[PAD]")
        self._tokenizer = tok
        self._weights = prepare(unpack(self.params, base))

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """The linear layer's output for each text."""
        self.load()
        assert self._weights is not None
        out = np.zeros(len(texts), np.float32)
        for chunk in _chunks(sorted(range(len(texts)), key=lambda i: len(texts[i])), texts):
            encodings = self._tokenizer.encode_batch([texts[i] or " " for i in chunk])
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            pooled = mean_pool(encode(self._weights, self.shape, ids, mask), mask)
            unit = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            out[chunk] = (unit * SCALE) @ self.params["w"] + self.params["b"][0]
        return out

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """P(harmful) of each text."""
        return sigmoid(self.logits(texts)).astype(np.float32)

    def predict(
        self, texts: Sequence[str], embed: Callable[[Sequence[str]], np.ndarray]
    ) -> np.ndarray:
        """P(harmful) of each text (``embed`` is unused: this head reads tokens)."""
        return self.probabilities(texts)
