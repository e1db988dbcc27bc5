"""A text classifier whose labels map to a score, e.g. toxicity labels to a safety score.

The classifier reads each answer (optionally after the request) and gives a
probability per label: softmax over labels for a single-label model, a sigmoid
per label for a multi-label one (``config.problem_type ==
"multi_label_classification"`` or the ``multi_label`` option). The score is the
sum of the probabilities weighted by the ``labels`` mapping::

    - name: toxicity
      kind: text_classifier
      model: /models/toxic-bert
      labels: {toxic: 1.0, severe_toxic: 1.0, insult: 0.5}
      direction: lower
      gate: {max: 0.5}
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from aligntime import hf
from aligntime.errors import ConfigError
from aligntime.scorers.base import Direction, request_text
from aligntime.scorers.hf_common import SequenceModelOptions, SequenceModelScorer
from aligntime.types import Candidate, Message


class TextClassifierOptions(SequenceModelOptions):
    """Options of the ``text_classifier`` scorer."""

    labels: dict[str, float] = Field(min_length=1)
    """Label name (from the model's ``id2label``) -> weight of its probability in the score."""
    multi_label: bool | None = None
    """Sigmoid per label instead of a softmax; default: from the model's ``problem_type``."""
    direction: Direction = "lower"
    """Whether a higher score is better; "lower" suits toxicity or harm labels."""
    include_request: bool = False
    """Classify "request + answer" instead of the answer alone; the request is every user
    turn of the conversation (the model keeps the end of a long input)."""
    max_length: int = Field(512, ge=8, le=131072)
    """Tokens of each input read; longer inputs lose their beginning."""


class TextClassifier(SequenceModelScorer):
    """Weighted label probabilities of each answer (e.g. P(toxic)); lower is better by default."""

    Options = TextClassifierOptions
    options: TextClassifierOptions

    def __init__(self, options: TextClassifierOptions, *, name: str = "classifier") -> None:
        super().__init__(options, name=name)
        self.direction = options.direction
        self.value_range = _value_range(options, multi_label=bool(options.multi_label), total=0)
        self.weights: list[float] = []
        self.multi_label = bool(options.multi_label)

    def configure(self, loaded: hf.LoadedModel) -> None:
        o = self.options
        config = loaded.model.config
        id2label = getattr(config, "id2label", None) or {}
        names = [str(id2label.get(i, f"LABEL_{i}")) for i in range(int(config.num_labels))]
        unknown = [label for label in o.labels if label not in names]
        if unknown:
            raise ConfigError(
                f"text classifier {o.model!r} has no label "
                + ", ".join(repr(label) for label in unknown),
                hint=f"its labels are: {', '.join(names)}",
            )
        self.weights = [o.labels.get(name, 0.0) for name in names]
        if o.multi_label is None:
            self.multi_label = getattr(config, "problem_type", None) == "multi_label_classification"
        self.value_range = _value_range(o, multi_label=self.multi_label, total=len(names))

    def score_sync(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        if not candidates:
            return []
        torch = hf.require_torch()
        self.load()
        request = request_text(messages, 4 * self.options.max_length)
        texts = [
            f"{request}\n{c.text}" if self.options.include_request else c.text for c in candidates
        ]
        logits = torch.tensor(self.logits(texts))
        probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=-1)
        weights = torch.tensor(self.weights, dtype=probs.dtype)
        return [float(x) for x in (probs @ weights).tolist()]


def _value_range(
    options: TextClassifierOptions, *, multi_label: bool, total: int
) -> tuple[float, float]:
    """The interval the weighted probability can fall in, for normalisation."""
    weights = list(options.labels.values())
    if multi_label:
        # Independent probabilities: any subset of labels can be near 1 at once.
        return (sum(min(w, 0.0) for w in weights), sum(max(w, 0.0) for w in weights))
    # Softmax: a convex combination of the weights (unmapped labels weigh 0).
    if total > len(weights) or total == 0:
        weights = [*weights, 0.0]
    low, high = min(weights), max(weights)
    return (low, high) if low < high else (low, low + 1.0)
