"""Relevance: cosine similarity between the request (every user turn) and each answer.

Sentence embeddings come from a Hugging Face encoder (all-MiniLM-L6-v2 by
default, pulled from the package index) with mean pooling, as the model was
trained. An off-topic answer, however fluent, lands far from the request.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from aligntime.errors import ConfigError
from aligntime.models import store
from aligntime.scorers.base import SyncScorer, request_text
from aligntime.types import Candidate, Message


class EmbeddingOptions(BaseModel):
    """Options of the ``embedding`` scorer."""

    model_config = ConfigDict(extra="forbid")

    model: str = "all-minilm-l6-v2"
    """Catalogue name or path of a Hugging Face sentence encoder folder."""
    max_length: int = Field(256, ge=8, le=8192)
    """Tokens of each text that are embedded."""
    device: str = "cpu"
    """Torch device, e.g. ``cpu`` or ``cuda``."""
    max_request_chars: int = Field(1000, ge=20)
    """Characters of the request embedded: every user turn, the oldest text cut first (the
    encoder would otherwise cut the latest turn, which the answer replies to)."""
    threads: int | None = Field(1, ge=1)
    """Torch CPU threads (process-wide). One keeps torch's idle worker threads from
    spinning on the cores llama.cpp decodes on; ``null`` leaves torch's default."""


class EmbeddingRelevance(SyncScorer):
    """Cosine similarity (-1..1) of request and answer embeddings; higher is better."""

    Options = EmbeddingOptions
    direction = "higher"
    value_range = (0.0, 1.0)

    def __init__(self, options: EmbeddingOptions | None = None, *, name: str = "relevance") -> None:
        self.options = options or EmbeddingOptions()
        self.name = name
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            path = store.resolve(self.options.model)
            try:
                import torch
                import transformers
                from transformers import AutoModel, AutoTokenizer
            except ImportError as exc:
                raise ConfigError(
                    "the embedding scorer needs torch and transformers",
                    hint="pip install 'aligntime[transformers]'",
                ) from exc
            if self.options.threads is not None:
                torch.set_num_threads(self.options.threads)
            # The library logs, the CLI owns the terminal: no loading bars from transformers.
            transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
            transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
            self._tokenizer = AutoTokenizer.from_pretrained(str(path))
            model = AutoModel.from_pretrained(str(path))
            self._model = model.to(self.options.device).eval()

    def embed(self, texts: list[str]) -> Any:
        """Unit-length mean-pooled embeddings, one row per text (a torch tensor)."""
        import torch

        self.load()
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
        return torch.nn.functional.normalize(pooled, dim=-1)

    def query(self, messages: Sequence[Message]) -> str:
        """The text an answer is compared with: the conversation's user turns."""
        return request_text(messages, self.options.max_request_chars) or " "

    def score_sync(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        if not candidates:
            return []
        vectors = self.embed([self.query(messages)] + [c.text or " " for c in candidates])
        sims = vectors[1:] @ vectors[0]
        return [float(x) for x in sims.tolist()]
