"""Fine-tune a BERT-style encoder into a harm classifier (torch; build time only).

Mean-pooled, unit-length output scaled by :data:`aligntime.training.tuned_head.SCALE`,
a linear layer, class-balanced binary cross-entropy with soft labels (0.5 for a
careful-answer case). With ``top_layers`` only the top layers and the linear layer
train, so that what ships beside the stock encoder is small
(:func:`aligntime.training.tuned_head.pack`). Texts are truncated from the left, as the
run-time head (:class:`aligntime.training.tuned_head.TunedHarmHead`) does. Needs torch
and transformers (the ``hf`` extra); the scorer that runs the result needs neither.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aligntime.models.store import file_sha256
from aligntime.training.data import Dataset
from aligntime.training.tuned_head import SCALE, TunedHarmHead, pack

if TYPE_CHECKING:
    from aligntime.training.trainer import TrainResult

Example = tuple[str, float]
"""A text and its label: 1 harmful, 0 benign, 0.5 a careful-answer case."""


@dataclass
class Settings:
    """How the encoder is fine-tuned."""

    epochs: int = 3
    learning_rate: float = 4e-5
    batch: int = 32
    max_length: int = 64
    seed: int = 0
    warmup_steps: int = 30
    top_layers: int = 0
    """Train only the top this many transformer layers (and the head); 0 trains them all."""


class EncoderClassifier:
    """A transformers encoder, mean-pooled, with a linear head: P(harmful) of a text."""

    def __init__(self, folder: Path, max_length: int) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.torch = torch
        # Left truncation keeps a long conversation's newest turn, as the run-time head does.
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), truncation_side="left")
        self.encoder = AutoModel.from_pretrained(str(folder))
        width = int(self.encoder.config.hidden_size)
        self.head = torch.nn.Linear(width, 1)
        self.max_length = max_length

    def parameters(self) -> list[Any]:
        """The weights that train (all but those :meth:`freeze_below` froze)."""
        params = [*self.encoder.parameters(), *self.head.parameters()]
        return [p for p in params if p.requires_grad]

    def freeze_below(self, top: int) -> None:
        """Freeze the embeddings and every layer but the top ``top`` ones: a smaller set of
        weights to ship beside the stock encoder."""
        layers = int(self.encoder.config.num_hidden_layers)
        keep = {f"layer.{k}." for k in range(max(layers - top, 0), layers)}
        for name, param in self.encoder.named_parameters():
            param.requires_grad = any(k in name for k in keep)

    def logits(self, texts: Sequence[str]) -> Any:
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        hidden = self.encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        # Unit-length features, scaled: the sentence-transformers space the frozen head
        # reads, with room for the linear head to reach confident logits early.
        unit = self.torch.nn.functional.normalize(pooled, dim=-1) * SCALE
        return self.head(unit).squeeze(-1)

    def p_harm(self, texts: list[str], chunk: int = 64) -> np.ndarray:
        self.encoder.eval()
        out: list[float] = []
        with self.torch.no_grad():
            for start in range(0, len(texts), chunk):
                out += self.torch.sigmoid(self.logits(texts[start : start + chunk])).tolist()
        return np.array(out, dtype=np.float32)


def finetune(
    examples: Sequence[Example],
    folder: Path,
    settings: Settings,
    progress: Callable[[int, float, float], None] | None = None,
) -> EncoderClassifier:
    """Fine-tune the encoder in ``folder`` on ``examples`` (text, soft label in 0..1), with
    harmful and benign mass balanced as in the frozen head's fit. ``progress`` is called
    after each epoch with the epoch, its mean loss and the seconds so far."""
    import torch

    torch.manual_seed(settings.seed)
    rng = random.Random(settings.seed)
    model = EncoderClassifier(folder, settings.max_length)
    if settings.top_layers:
        model.freeze_below(settings.top_layers)
    data = [(str(text), float(label)) for text, label in examples]
    harmful = sum(y for _, y in data)
    benign = sum(1 - y for _, y in data)
    up = harmful / max(benign, 1e-9)  # the benign side's weight
    steps = settings.epochs * -(-len(data) // settings.batch)
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda step: min(1.0, (step + 1) / settings.warmup_steps) * max(0.0, 1 - step / steps),
    )
    started = time.perf_counter()
    for epoch in range(settings.epochs):
        rng.shuffle(data)
        model.encoder.train()
        total = 0.0
        for start in range(0, len(data), settings.batch):
            texts, labels = zip(*data[start : start + settings.batch], strict=True)
            y = torch.tensor(labels)
            weight = y + (1 - y) * up
            loss = (
                torch.nn.functional.binary_cross_entropy_with_logits(
                    model.logits(texts), y, reduction="none"
                )
                * weight
            ).sum() / weight.sum()
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * len(texts)
        if progress is not None:
            progress(epoch + 1, total / len(data), time.perf_counter() - started)
    return model


def tuned_tensors(model: EncoderClassifier) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
    """The trained encoder tensors (by their Hugging Face names), and the linear layer's
    weights and bias, as float32 arrays."""
    tensors = {
        name: param.detach().float().numpy().copy()
        for name, param in model.encoder.named_parameters()
        # The pooler is not part of the pooled output; it never trains.
        if param.requires_grad and not name.startswith("pooler.")
    }
    w = model.head.weight.detach().float().numpy().reshape(-1).copy()
    return tensors, w, float(model.head.bias.detach().float().item())


def base_weights(folder: Path) -> dict[str, np.ndarray]:
    """The stock encoder's float32 tensors (``model.safetensors`` in ``folder``)."""
    from safetensors.numpy import load_file

    return dict(load_file(str(folder / "model.safetensors")))


def to_tuned_head(
    model: EncoderClassifier, base_name: str, folder: Path, *, max_length: int = 256
) -> TunedHarmHead:
    """The torch-free head of a fine-tuned ``model`` whose stock encoder is ``folder``
    (catalogue name ``base_name``): what a trained-scorer folder stores and runs."""
    tensors, w, b = tuned_tensors(model)
    config = model.encoder.config
    head_config = {
        "base": base_name,
        "base_sha256": file_sha256(folder / "model.safetensors"),
        "layers": int(config.num_hidden_layers),
        "heads": int(config.num_attention_heads),
        "max_length": max_length,
    }
    return TunedHarmHead(pack(tensors, base_weights(folder), w, b), head_config)


def cross_fit(
    examples: Sequence[Example],
    base_name: str,
    folder: Path,
    settings: Settings,
    folds: int,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Out-of-fold P(harmful) of every example: ``folds`` fine-tunes, each scoring (with
    the torch-free head, as it will run) the fold it left out."""
    order = list(range(len(examples)))
    random.Random(settings.seed + 1).shuffle(order)
    out = np.full(len(examples), np.nan, np.float32)
    for fold in range(folds):
        test = order[fold::folds]
        held = set(test)
        model = finetune([e for i, e in enumerate(examples) if i not in held], folder, settings)
        head = to_tuned_head(model, base_name, folder)
        out[test] = head.probabilities([examples[i][0] for i in test])
        if progress is not None:
            progress(fold + 1, folds)
    return out


def tune_harm_head(
    result: TrainResult,
    data: Dataset,
    split: str,
    settings: Settings,
    *,
    base: str = "all-minilm-l6-v2",
    folds: int = 0,
    threshold: float = 0.5,
    progress: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Replace ``result``'s harm head by ``base`` with its top ``settings.top_layers``
    layers fine-tuned on the training requests (those outside ``result.heldout_groups``,
    grouped by ``split``), and its harm metrics by the tuned head's (at ``threshold``).

    With ``folds`` >= 2 it also returns the training requests' out-of-fold P(harmful),
    keyed by request text, from which thresholds are chosen
    (:func:`aligntime.training.trainer.gate_thresholds`); else an empty dict.
    ``progress`` gets one line per epoch and per fold.
    """
    from aligntime.errors import InputError
    from aligntime.models import store
    from aligntime.training.trainer import group_of, harm_metrics

    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        from aligntime.extras import missing

        raise missing("fine-tuning the harm head", exc, extra="hf") from exc

    held = set(result.heldout_groups)
    requests = data.harm_examples()
    train_set = [r for r in requests if group_of(r, split) not in held]
    test_set = [r for r in requests if group_of(r, split) in held]
    labels = np.array([r.label for r in train_set], np.float32)
    if not (labels >= 0.5).any() or not (labels < 0.5).any():
        raise InputError("fine-tuning the harm head needs harmful and benign training requests")
    examples = [(r.request, float(r.label)) for r in train_set]
    folder = store.resolve(base)
    started = time.perf_counter()

    def say(line: str) -> None:
        if progress is not None:
            progress(f"{line} ({time.perf_counter() - started:.0f}s)")

    model = finetune(
        examples, folder, settings, lambda e, loss, _: say(f"epoch {e}: loss {loss:.4f}")
    )
    head = to_tuned_head(model, base, folder)
    head.config["tuned_layers"] = settings.top_layers or head.shape.layers
    oof: dict[str, float] = {}
    if folds >= 2:
        scores = cross_fit(
            examples, base, folder, settings, folds, lambda f, n: say(f"fold {f}/{n}")
        )
        oof = {text: float(p) for (text, _), p in zip(examples, scores, strict=True)}
    metrics: dict[str, dict[str, Any] | None] = {
        "train": harm_metrics(head.probabilities([e[0] for e in examples]), labels, threshold)
    }
    metrics["heldout"] = (
        harm_metrics(
            head.probabilities([r.request for r in test_set]),
            np.array([r.label for r in test_set], np.float32),
            threshold,
        )
        if test_set
        else None
    )
    result.metrics["harm"] = metrics
    result.model.harm = head
    result.model.config["harm"] = {"threshold": threshold, "tuned": head.config}
    return oof
