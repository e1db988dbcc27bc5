"""What the sequence-classification scorers share: loading, and batched forward passes.

A reward model and a text classifier are both ``AutoModelForSequenceClassification``
heads that read a text and give a row of logits; they differ in how they build the
text and what they make of the logits.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import ConfigDict, Field

from aligntime import hf
from aligntime.registry import OptionsModel
from aligntime.scorers.base import SyncScorer
from aligntime.scorers.batching import run_batched


class SequenceModelOptions(OptionsModel):
    """Options every sequence-classification scorer takes."""

    model_config = ConfigDict(extra="forbid")

    model: str
    """Local folder of an ``AutoModelForSequenceClassification`` model (or a hub id)."""
    device: str = Field("auto", pattern=hf.DEVICE_PATTERN)
    """Torch device: auto (CUDA when present, else CPU), cpu, cuda or cuda:N. Name the
    generator's device to share one GPU with it."""
    dtype: hf.Dtype = "auto"
    """Weights dtype; auto is bfloat16 on CUDA and float32 on the CPU."""
    max_length: int = Field(2048, ge=8, le=131072)
    """Tokens of each input read; longer inputs lose their beginning (the answer's end
    is kept, since that is where the head reads)."""
    batch_tokens: int = Field(16384, ge=64)
    """Bound on padded tokens (longest x count) per forward pass."""
    threads: int | None = Field(None, ge=1)
    """Torch CPU threads (process-wide); default: torch's own choice."""


class SequenceModelScorer(SyncScorer):
    """Base of scorers that run a sequence-classification model over texts."""

    options: SequenceModelOptions

    def __init__(self, options: SequenceModelOptions, *, name: str) -> None:
        self.options = options
        self.name = name
        # on_load through the instance: a subclass's configure.
        self._model = hf.LazyModel(
            "sequence_classifier", options.model, options, on_load=lambda m: self.configure(m)
        )

    @property
    def loaded(self) -> hf.LoadedModel:
        """The shared model and tokenizer, loaded on first use."""
        return self._model.get()

    def configure(self, loaded: hf.LoadedModel) -> None:
        """Check options against the loaded model's config (labels, objectives)."""

    def load(self) -> None:
        _ = self.loaded

    @property
    def labels(self) -> list[str]:
        """The model's output names, from ``config.id2label``."""
        config = self.loaded.model.config
        id2label = getattr(config, "id2label", None) or {}
        return [str(id2label.get(i, f"LABEL_{i}")) for i in range(int(config.num_labels))]

    def logits(self, texts: Sequence[str], *, templated: bool = False) -> list[list[float]]:
        """One row of float logits per text, computed in token-bounded batches.

        ``templated`` texts were rendered by a chat template, which writes its own
        special tokens; plain texts get the tokenizer's (BOS, CLS, ...).
        """
        torch = hf.require_torch()
        loaded = self.loaded
        tokenizer = loaded.tokenizer
        o = self.options
        encoded: list[list[int]] = [
            tokenizer(
                text,
                add_special_tokens=not templated,
                truncation=False,
            )["input_ids"][-o.max_length :]
            for text in texts
        ]

        def forward(batch: list[list[int]]) -> list[list[float]]:
            width = max(len(ids) for ids in batch)
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
            # Right padding; the model finds each row's last real token by the pad id.
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, seq in enumerate(batch):
                ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[row, : len(seq)] = 1
            with loaded.lock, torch.inference_mode():
                out = loaded.model(
                    input_ids=ids.to(loaded.device), attention_mask=mask.to(loaded.device)
                )
            rows: list[list[float]] = out.logits.float().cpu().tolist()
            return rows

        return run_batched(encoded, [len(e) for e in encoded], o.batch_tokens, forward)
