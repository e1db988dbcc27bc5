"""A scorer trained by ``aligntime train-scorer``: small heads over MiniLM embeddings.

``head: reward`` rates each answer to the conversation (a Bradley-Terry reward,
squashed to 0..1; higher is better). It reads the request's harm estimate: the
input gate's (``assessment.harm``) when the aligner passes one, else its own harm
head's, so that a refusal rates high for a harmful request and low for a benign
one. ``head: harm`` gives P(harmful) (lower is better): of the conversation in
:meth:`score_request`, which is what the input gate calls (the highest estimate of
its views: the exchange, its user turns, its last user turn and each system turn on its
own, so that a long system prompt neither dilutes nor mimics a request), and of each
answer's text in :meth:`score` (the same head reading the answer as a request, a crude
output check). ``head: advice`` gives P(the request needs a qualified professional:
medical, mental-health, legal or financial advice about the user's own situation)
of the conversation (read the same way), for an input scorer marked ``advice: true``.

``model`` is ``harm-minilm`` (the weights shipped with aligntime, built by
``scripts/build_safety_scorer.py``) or the path of a folder that
``aligntime train-scorer`` wrote. Every folder is checked against its sha256
manifest when it loads.

Example policy entries::

    - name: harm            # in the input gate
      kind: trained
      head: harm
    - name: advice          # in the input gate, with advice: true
      kind: trained
      head: advice
    - name: reward          # an output scorer
      kind: trained
      head: reward
      weight: 2.0
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import ConfigDict, Field

from aligntime.errors import ConfigError
from aligntime.registry import OptionsModel
from aligntime.scorers.base import (
    BatchItem,
    Candidates,
    MaybeAssessment,
    Messages,
    Scorer,
    conversation_text,
    request_views,
    split_rows,
)
from aligntime.scorers.sentence_encoder import SentenceEncoder
from aligntime.training.artifact import TrainedModel, load_folder
from aligntime.training.features import reward_features
from aligntime.training.heads import HarmHead, sigmoid
from aligntime.training.tuned_head import TunedHarmHead
from aligntime.types import Message

BUILTIN = {"harm-minilm": "harm-minilm"}
"""Folders shipped inside the package, under ``aligntime/scorers/weights``."""


class TrainedOptions(OptionsModel):
    """Options of the ``trained`` scorer."""

    model_config = ConfigDict(extra="forbid")

    model: str = "harm-minilm"
    """``harm-minilm`` (shipped) or the path of a folder written by ``aligntime train-scorer``."""
    head: Literal["reward", "harm", "advice"] = "reward"
    """``reward``: rate answers (higher better); ``harm``: P(harmful) (lower better);
    ``advice``: P(needs a qualified professional), for the input gate."""
    use_assessment: bool = True
    """Reward head: take the request's harm from the input gate when it gives one."""
    threads: int = Field(1, ge=1, le=64)
    """onnxruntime threads of the encoder."""


def _highest(
    head: HarmHead | TunedHarmHead, messages: Sequence[Message], encoder: SentenceEncoder
) -> float:
    """A request head's highest estimate over the conversation's views: a long system
    prompt must not dilute the request, nor be read as part of it (see request_views)."""
    return float(np.max(head.predict(request_views(messages), encoder.embed)))


def builtin_folder(name: str) -> Path:
    """The path of a shipped weights folder."""
    root = resources.files("aligntime.scorers").joinpath("weights").joinpath(BUILTIN[name])
    return Path(str(root))


class TrainedScorer(Scorer):
    """Reward or harm from a trained-scorer folder (see the module docstring)."""

    Options = TrainedOptions
    options: TrainedOptions

    def __init__(self, options: TrainedOptions | None = None, *, name: str = "trained") -> None:
        self.options = options or TrainedOptions()
        self.name = name
        reward = self.options.head == "reward"
        self.direction = "higher" if reward else "lower"
        self.value_range = (0.0, 1.0)
        self.reads_assessment = reward
        self._model: TrainedModel | None = None
        self._encoder: SentenceEncoder | None = None
        self._lock = threading.Lock()

    @property
    def folder(self) -> Path:
        name = self.options.model
        return builtin_folder(name) if name in BUILTIN else Path(name).expanduser()

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            model = load_folder(self.folder)
            if self.options.head == "reward" and model.reward is None:
                raise ConfigError(
                    f"the trained scorer {self.options.model!r} has no reward head",
                    hint="it was trained on labelled requests only; use head: harm",
                )
            if model.harm is None and (self.options.head == "harm" or "hv" in model.features):
                raise ConfigError(
                    f"the trained scorer {self.options.model!r} has no harm head",
                    hint="train it with harm labels (a 'harmful' field), or use head: reward",
                )
            if self.options.head == "advice" and model.advice is None:
                raise ConfigError(
                    f"the trained scorer {self.options.model!r} has no advice head",
                    hint="train it with advice labels (an 'advice' field), or use head: harm",
                )
            enc = model.encoder
            encoder = SentenceEncoder(
                str(enc["model"]),
                str(enc["tokenizer"]),
                max_length=int(enc.get("max_length", 256)),
                threads=self.options.threads,
            )
            encoder.load()
            if self.options.head == "harm" and isinstance(model.harm, TunedHarmHead):
                # Its base encoder is read and checked here, not on the first request (the
                # other heads load it only if they need it: it holds 90 MB of weights).
                model.harm.load()
            self._encoder = encoder
            self._model = model

    def _parts(self) -> tuple[TrainedModel, SentenceEncoder]:
        self.load()
        assert self._model is not None and self._encoder is not None
        return self._model, self._encoder

    def harm_of(self, messages: Sequence[Message]) -> float:
        """P(harmful) of the conversation from the harm head (the advice head's P(needs a
        professional) for ``head: advice``): the highest over its views (the exchange, its
        user turns, its last user turn, each system turn on its own:
        :func:`~aligntime.scorers.base.request_views`)."""
        model, encoder = self._parts()
        head = model.advice if self.options.head == "advice" else model.harm
        if head is None:
            raise ConfigError(
                f"the trained scorer {self.options.model!r} has no {self.options.head} head"
            )
        return _highest(head, messages, encoder)

    def score_sync(
        self, messages: Messages, candidates: Candidates, assessment: MaybeAssessment = None
    ) -> list[float]:
        """Blocking :meth:`score`."""
        if not candidates:
            return []
        model, encoder = self._parts()
        texts = [c.text or " " for c in candidates]
        if self.options.head in ("harm", "advice"):
            head = model.advice if self.options.head == "advice" else model.harm
            assert head is not None
            return [float(x) for x in head.predict(texts, encoder.embed)]
        assert model.reward is not None
        request = conversation_text(messages)
        rows = encoder.embed([request, *texts])
        u = np.repeat(rows[:1], len(texts), axis=0)
        if self.options.use_assessment and assessment is not None and assessment.harm is not None:
            harm = float(assessment.harm)
        elif model.harm is not None:
            harm = _highest(model.harm, messages, encoder)
        else:
            harm = 0.0
        h = np.full(len(texts), harm, np.float32)
        x = reward_features(u, rows[1:], h, model.features)
        return [float(v) for v in sigmoid(model.reward(x))]

    async def score(
        self, messages: Messages, candidates: Candidates, assessment: MaybeAssessment = None
    ) -> list[float]:
        return await asyncio.to_thread(self.score_sync, messages, candidates, assessment)

    async def score_batch(
        self, items: Sequence[BatchItem]
    ) -> Sequence[list[float] | BaseException]:
        """The harm head reads the answers alone: every item's answers in one encoder pass.

        (The reward head reads the gate's verdict, so the server never batches it.)
        """
        if self.options.head == "reward" or len(items) == 1:
            return await super().score_batch(items)
        flat = [candidate for _, candidates in items for candidate in candidates]
        return split_rows(await self.score((), flat), items)

    async def score_request(self, messages: Sequence[Message]) -> float:
        """P(harmful) of the conversation (every turn), for the input gate (P(needs a
        professional) for ``head: advice``)."""
        return await asyncio.to_thread(self.harm_of, messages)
