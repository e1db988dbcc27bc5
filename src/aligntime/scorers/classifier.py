"""Safety classifiers: the probability that an answer is offensive or toxic.

``model: profanity-check`` uses the linear SVM that the ``alt-profanity-check``
package ships (trained on labelled offensive and hateful comments). It is
applied to every sentence and to the whole answer, and the answer's value is
the highest of those probabilities: one insult inside a long, polite answer
must not be averaged away.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ConfigDict, Field

from aligntime.errors import ConfigError
from aligntime.registry import OptionsModel
from aligntime.scorers.base import BatchItem, SyncScorer, split_rows
from aligntime.types import Candidate, Message

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


class ClassifierOptions(OptionsModel):
    """Options of the ``classifier`` scorer."""

    model_config = ConfigDict(extra="forbid")

    model: str = "profanity-check"
    """Which classifier: ``profanity-check`` (scikit-learn model from alt-profanity-check)."""
    per_sentence: bool = True
    """Score each sentence too and keep the highest probability."""
    max_chars: int = Field(4000, ge=1)
    """Characters of an answer that are classified (the rest is ignored)."""


class SafetyClassifier(SyncScorer):
    """Probability (0..1) that a candidate is offensive; lower is better."""

    Options = ClassifierOptions
    options: ClassifierOptions
    direction = "lower"
    value_range = (0.0, 1.0)

    def __init__(self, options: ClassifierOptions | None = None, *, name: str = "safety") -> None:
        self.options = options or ClassifierOptions()
        self.name = name
        if self.options.model != "profanity-check":
            raise ConfigError(
                f"unknown classifier model {self.options.model!r}",
                hint="the classifier scorer supports model: profanity-check",
            )
        self._predict: Callable[[list[str]], Any] | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._predict is None:
                try:
                    from profanity_check import predict_prob
                except ImportError as exc:
                    from aligntime.extras import missing

                    raise missing("the profanity-check classifier", exc, extra="embedded") from exc
                self._predict = predict_prob

    def score_sync(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        self.load()
        assert self._predict is not None
        pieces: list[str] = []
        owners: list[int] = []
        for i, cand in enumerate(candidates):
            text = cand.text[: self.options.max_chars]
            parts = [text]
            if self.options.per_sentence:
                parts += [s for s in _SENTENCE_END.split(text) if s.strip()]
            pieces.extend(parts)
            owners.extend([i] * len(parts))
        values = [0.0] * len(candidates)
        if pieces:
            for owner, prob in zip(owners, self._predict(pieces), strict=True):
                values[owner] = max(values[owner], float(prob))
        return values

    def score_batch_sync(self, items: Sequence[BatchItem]) -> list[list[float]]:
        """Every item's answers in one classifier call: the classifier reads the answers only."""
        flat = [candidate for _, candidates in items for candidate in candidates]
        return split_rows(self.score_sync((), flat), items)
