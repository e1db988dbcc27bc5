"""Relevance: cosine similarity between the request (every user turn) and each answer.

Sentence embeddings come from a Hugging Face encoder (all-MiniLM-L6-v2 by
default, pulled from the package index) with mean pooling, as the model was
trained. An off-topic answer, however fluent, lands far from the request.

Two runtimes compute the same embeddings. ``onnx`` runs an ONNX export on
onnxruntime with the ``tokenizers`` package (the int8 MiniLM for the default
model): no torch, so the embedded default installs and starts small. ``torch``
runs the Hugging Face folder on transformers, on any torch device. ``auto``
takes onnx on the CPU when an export is known, and torch otherwise (a GPU, or a
folder with no ``model.onnx``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ConfigDict, Field

from aligntime.errors import ConfigError
from aligntime.models import store
from aligntime.registry import OptionsModel
from aligntime.scorers.base import BatchItem, SyncScorer, request_text, split_rows
from aligntime.scorers.sentence_encoder import DEFAULT_MODEL, DEFAULT_TOKENIZER, SentenceEncoder
from aligntime.types import Candidate, Message


class EmbeddingOptions(OptionsModel):
    """Options of the ``embedding`` scorer."""

    model_config = ConfigDict(extra="forbid")

    model: str = "all-minilm-l6-v2"
    """Catalogue name or path of a Hugging Face sentence encoder folder (its tokenizer
    serves both runtimes)."""
    runtime: Literal["auto", "onnx", "torch"] = "auto"
    """``onnx`` (onnxruntime, no torch), ``torch`` (transformers), or ``auto``: onnx on
    the CPU when an ONNX export of ``model`` is known, else torch."""
    onnx: str | None = None
    """The ONNX export for the onnx runtime: a catalogue name, a ``.onnx`` file or a
    folder holding ``model.onnx``. Default: the int8 export for all-minilm-l6-v2,
    else ``model.onnx`` inside the ``model`` folder."""
    max_length: int = Field(256, ge=8, le=8192)
    """Tokens of each text that are embedded."""
    device: str = "cpu"
    """``cpu``, or a torch device such as ``cuda`` (the torch runtime)."""
    max_request_chars: int = Field(1000, ge=20)
    """Characters of the request embedded: every user turn, the oldest text cut first (the
    encoder would otherwise cut the latest turn, which the answer replies to)."""
    threads: int | None = Field(1, ge=1)
    """CPU threads (torch's are process-wide). One keeps idle worker threads from
    spinning on the cores llama.cpp decodes on; ``null`` leaves the runtime's default."""


class EmbeddingRelevance(SyncScorer):
    """Cosine similarity (-1..1) of request and answer embeddings; higher is better."""

    Options = EmbeddingOptions
    options: EmbeddingOptions
    direction = "higher"
    value_range = (0.0, 1.0)

    def __init__(self, options: EmbeddingOptions | None = None, *, name: str = "relevance") -> None:
        self.options = options or EmbeddingOptions()
        self.name = name
        self._model: Any = None
        self._tokenizer: Any = None
        self._encoder: SentenceEncoder | None = None
        self._lock = threading.Lock()
        if self.options.runtime == "onnx" and self.options.device != "cpu":
            raise ConfigError(
                f"the onnx runtime runs on the CPU, not on device {self.options.device!r}",
                hint="use runtime: torch (or auto) with a GPU device",
            )

    @property
    def runtime(self) -> Literal["onnx", "torch"]:
        """The runtime in use (``auto`` decided when the model is loaded)."""
        self.load()
        return "onnx" if self._encoder is not None else "torch"

    def load(self) -> None:
        with self._lock:
            if self._model is not None or self._encoder is not None:
                return
            path = store.resolve(self.options.model)
            onnx = self._onnx_export(path)
            if onnx is not None:
                encoder = SentenceEncoder(
                    onnx,
                    str(path),
                    max_length=self.options.max_length,
                    threads=self.options.threads or 1,
                )
                encoder.load()
                self._encoder = encoder
                return
            try:
                import torch
                import transformers
                from transformers import AutoModel, AutoTokenizer
            except ImportError as exc:
                from aligntime.extras import missing

                raise missing("the embedding scorer's torch runtime", exc, extra="hf") from exc
            if self.options.threads is not None:
                torch.set_num_threads(self.options.threads)
            # The library logs, the CLI owns the terminal: no loading bars from transformers.
            transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
            transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
            self._tokenizer = AutoTokenizer.from_pretrained(str(path))
            model = AutoModel.from_pretrained(str(path))
            self._model = model.to(self.options.device).eval()

    def _onnx_export(self, path: Path) -> str | None:
        """The ONNX model to run, or None for the torch runtime."""
        o = self.options
        if o.runtime == "torch" or (o.runtime == "auto" and o.device != "cpu"):
            return None
        if o.onnx is not None:
            return o.onnx
        if o.model == DEFAULT_TOKENIZER:
            return DEFAULT_MODEL
        if (path / "model.onnx").is_file():
            return str(path / "model.onnx")
        if o.runtime == "onnx":
            raise ConfigError(
                f"embedding model {o.model!r} has no model.onnx for the onnx runtime",
                hint="give the export with the onnx option, or use runtime: torch",
            )
        return None

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length mean-pooled embeddings, one float32 row per text."""
        self.load()
        if self._encoder is not None:
            return self._encoder.embed(texts)
        import torch

        batch = self._tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.options.max_length,
            return_tensors="pt",
        ).to(self.options.device)
        with torch.inference_mode():
            hidden = self._model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        vectors: np.ndarray = torch.nn.functional.normalize(pooled, dim=-1).float().cpu().numpy()
        return vectors

    def query(self, messages: Sequence[Message]) -> str:
        """The text an answer is compared with: the conversation's user turns."""
        return request_text(messages, self.options.max_request_chars) or " "

    def score_sync(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        return self.score_batch_sync([(messages, candidates)])[0]

    def score_batch_sync(self, items: Sequence[BatchItem]) -> list[list[float]]:
        """One forward pass over every item's request and every answer."""
        if not any(candidates for _, candidates in items):
            return [[] for _ in items]
        queries = [self.query(messages) for messages, _ in items]
        answers = [c.text or " " for _, candidates in items for c in candidates]
        vectors = self.embed(queries + answers)
        # Row j of the answers belongs to item owners[j]; unit vectors, so a dot is a cosine.
        owners = np.repeat(np.arange(len(items)), [len(candidates) for _, candidates in items])
        sims = (vectors[len(queries) :] * vectors[owners]).sum(axis=1)
        return split_rows(sims.tolist(), items)
