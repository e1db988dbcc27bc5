"""Features over frozen sentence embeddings.

A request (the whole conversation, as :func:`aligntime.scorers.base.conversation_text`
writes it) embeds to ``u``, an answer to ``v``; ``h`` is the request's harm
estimate (the harm head's, or the input gate's). The reward head reads

- ``u``  the request (cancels in a linear head's pairwise difference; a hidden
  layer can use it),
- ``v``  the answer on its own (fluency, tone, refusal or compliance),
- ``uv`` ``u * v`` elementwise: whether the answer is about the request,
- ``cos`` their cosine similarity (the sum of ``uv``, as one number that a small data
  set can weight without fitting 384 weights to say "stay on topic"),
- ``hv`` ``h * v``: the answer as it reads for a harmful request, so that one
  weight vector can favour refusals exactly when the request is harmful and
  disfavour them when it is benign.
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections.abc import Sequence
from typing import Protocol

import numpy as np

FEATURES = ("u", "v", "uv", "cos", "hv")


class Embedder(Protocol):
    """What the heads need from an encoder: unit-length rows, one per text."""

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def reward_features(
    u: np.ndarray, v: np.ndarray, h: np.ndarray, blocks: Sequence[str] = FEATURES
) -> np.ndarray:
    """Stack the named blocks for rows of request embeddings ``u``, answers ``v``, harm ``h``."""
    unknown = [b for b in blocks if b not in FEATURES]
    if unknown:
        raise ValueError(f"unknown feature block(s) {unknown}; known: {list(FEATURES)}")
    parts: list[np.ndarray] = []
    for block in blocks:
        if block == "u":
            parts.append(u)
        elif block == "v":
            parts.append(v)
        elif block == "uv":
            parts.append(u * v)
        elif block == "cos":
            parts.append((u * v).sum(axis=1, keepdims=True))
        else:  # "hv"
            parts.append(h[:, None] * v)
    return np.concatenate(parts, axis=1).astype(np.float32)


class CachedEmbedder:
    """Embeds each distinct text once (training reads the same request many times)."""

    def __init__(self, encoder: Embedder, batch: int = 64) -> None:
        self.encoder = encoder
        self.batch = batch
        self.cache: dict[str, np.ndarray] = {}

    def missing(self, texts: Sequence[str]) -> list[str]:
        return list(dict.fromkeys(t for t in texts if t not in self.cache))

    def fill(self, texts: Sequence[str]) -> None:
        """Embed ``texts`` (all of them, in one chunk) into the cache."""
        todo = self.missing(texts)
        if todo:
            for text, row in zip(todo, self.encoder.embed(todo), strict=True):
                self.cache[text] = row

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.fill(texts)
        return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, 0))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """:meth:`__call__`, so that a cache is itself an :class:`Embedder`."""
        return self(texts)


_TOKEN = re.compile(r"[a-z0-9']+")


def hashed_ngrams(texts: Sequence[str], buckets: int) -> np.ndarray:
    """Word unigrams and bigrams of each text, hashed into ``buckets`` columns.

    A sentence embedding keeps a request's topic and loses some of its wording; the
    words that carry intent ("without getting caught", "safely dispose") survive here.
    Counts are log-scaled and each row has unit length. The hash (crc32) is the same in
    every process and Python version, so trained weights mean the same everywhere.
    """
    out = np.zeros((len(texts), buckets), np.float32)
    for row, text in enumerate(texts):
        tokens = _TOKEN.findall(text.lower().replace("’", "'"))
        grams = tokens + [f"{a} {b}" for a, b in itertools.pairwise(tokens)]
        for gram in grams:
            out[row, zlib.crc32(gram.encode("utf-8")) % buckets] += 1.0
        np.log1p(out[row], out=out[row])
        norm = float(np.linalg.norm(out[row]))
        if norm > 0:
            out[row] /= norm
    return out
