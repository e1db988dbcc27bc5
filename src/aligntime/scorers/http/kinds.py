"""The served scorer kinds: a reward model, a text classifier and embedding relevance.

Each reads the conversation as its local counterpart does (every user turn, oldest
cut first) and sends the candidates to the server in bounded batches::

    - name: reward
      kind: http_reward_model
      server: vllm                       # vllm serve Skywork/Skywork-Reward-V2-Llama-3.1-8B
      base_url: http://localhost:8001
      model: Skywork/Skywork-Reward-V2-Llama-3.1-8B
      endpoint: /pooling                 # /pooling | /classify | /score | /rerank
      template: "<|user|>{request}<|assistant|>{answer}"
      value_range: [-10, 10]
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from pydantic import Field, model_validator

from aligntime.errors import ConfigError, ScorerError
from aligntime.scorers.base import BatchItem, Direction, Scorer, request_text, split_rows
from aligntime.scorers.http import endpoints as ep
from aligntime.scorers.http.client import ServedClient, ServedOptions
from aligntime.types import Candidate, Message

DEFAULT_TEMPLATE = "User: {request}\nAssistant: {answer}"


class ServedScorer(Scorer):
    """What the served kinds share: the endpoint choice, the client, the request text."""

    ENDPOINTS: ClassVar[dict[str, tuple[str, ...]]] = {}
    """Endpoints each server offers for this kind; the first is the default."""
    options: ServedOptions

    def __init__(self, options: ServedOptions, *, name: str) -> None:
        self.options = options
        self.name = name
        allowed = self.ENDPOINTS[options.server]
        self.endpoint = options.endpoint or allowed[0]
        if self.endpoint not in allowed:
            raise ConfigError(
                f"scorer {name!r}: {options.server} has no endpoint {self.endpoint!r} for this "
                f"kind",
                hint=f"use one of: {', '.join(allowed)}",
            )
        if options.server == "vllm" and not options.model:
            raise ConfigError(
                f"scorer {name!r}: a vllm server needs 'model' (the name it serves)",
                hint="the id that the server's /v1/models lists",
            )
        self.client = ServedClient(options, scorer=name, endpoint=self.endpoint)

    async def score(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        if not candidates:
            return []
        request = request_text(messages, self.options.max_request_chars)
        return await self.rate(request, [c.text for c in candidates])

    @abstractmethod
    async def rate(self, request: str, answers: list[str]) -> list[float]:
        """One raw value per answer to ``request`` (the user's turns as one text)."""

    def units(self, request: str, answers: list[str]) -> list[Any] | None:
        """What the server reads per answer when each carries its own request (a text or
        a pair), so several requests' answers can share one HTTP request; None when the
        endpoint reads one request for many answers (/rerank, embeddings)."""
        return None

    async def rate_units(self, units: list[Any]) -> list[float]:
        """One value per unit of :meth:`units`, sent ``batch_size`` to a request."""
        raise NotImplementedError  # only called where units() gave units

    async def score_batch(
        self, items: Sequence[BatchItem]
    ) -> Sequence[list[float] | BaseException]:
        """Several requests' candidates in shared HTTP requests where the endpoint allows
        it (the server coalesces concurrent requests through this); one failed HTTP
        request fails every item it carried."""
        chars = self.options.max_request_chars
        units = [self.units(request_text(m, chars), [c.text for c in cands]) for m, cands in items]
        if len(items) < 2 or any(u is None for u in units):
            return await super().score_batch(items)
        try:
            values = await self.rate_units([u for group in units for u in group or []])
        except Exception as exc:
            return [exc] * len(items)
        return split_rows(values, items)

    async def rate_pairs(self, request: str, answers: list[str]) -> list[float]:
        """The server's score of each (request, answer) pair: /score or /rerank."""
        o, client = self.options, self.client
        if o.server == "tei":
            return await client.map_batches(
                answers,
                lambda b: ep.tei_rerank_body(request, b, raw=False, truncate=o.truncate),
                ep.tei_rerank,
            )
        if self.endpoint == "/rerank":
            return await client.map_batches(
                answers, lambda b: ep.vllm_rerank_body(o.model, request, b), ep.vllm_rerank
            )
        return await client.map_batches(
            answers, lambda b: ep.vllm_score_body(o.model, request, b), ep.vllm_score
        )


class RewardOptions(ServedOptions):
    """Options of ``http_reward_model``."""

    template: str = DEFAULT_TEMPLATE
    """How /pooling and /classify read (request, answer) as one text: the reward model's
    chat format, with ``{request}`` and ``{answer}`` where they go."""
    output: int = Field(0, ge=0)
    """Which output of /pooling (or class of /classify) is the reward."""
    label: str | None = None
    """TEI /predict: the label whose raw score is the reward (default: the only one)."""
    value_range: tuple[float, float] | None = None
    """Rewards mapped to 0..1; default (-5, 5) for raw outputs, (0, 1) for probabilities."""
    direction: Direction = "higher"

    @model_validator(mode="after")
    def _checks(self) -> RewardOptions:
        if "{answer}" not in self.template:
            raise ValueError("template must contain {answer}")
        if self.value_range is not None and not self.value_range[0] < self.value_range[1]:
            raise ValueError("value_range must be (low, high) with low < high")
        return self


class ServedRewardModel(ServedScorer):
    """A reward (or a cross-encoder's relevance) per candidate, from the server."""

    Options = RewardOptions
    options: RewardOptions
    ENDPOINTS: ClassVar[dict[str, tuple[str, ...]]] = {
        "vllm": ("/pooling", "/classify", "/score", "/rerank"),
        "tei": ("/predict", "/rerank"),
    }

    def __init__(self, options: RewardOptions, *, name: str = "reward") -> None:
        super().__init__(options, name=name)
        raw = self.endpoint in ("/pooling", "/predict")
        self.value_range = options.value_range or ((-5.0, 5.0) if raw else (0.0, 1.0))
        self.direction = options.direction

    async def rate(self, request: str, answers: list[str]) -> list[float]:
        units = self.units(request, answers)
        if units is None:
            return await self.rate_pairs(request, answers)
        return await self.rate_units(units)

    def units(self, request: str, answers: list[str]) -> list[Any] | None:
        if self.endpoint in ("/score", "/rerank"):
            return None
        if self.options.server == "tei":  # /predict reads (request, answer) pairs
            return [[request, a] for a in answers]
        template = self.options.template
        return [template.replace("{request}", request).replace("{answer}", a) for a in answers]

    async def rate_units(self, units: list[Any]) -> list[float]:
        o = self.options
        if o.server == "tei":
            named = await self.client.map_batches(
                units,
                lambda b: ep.tei_predict_body(b, raw=True, truncate=o.truncate),
                ep.tei_predict,
            )
            return [self._label(row) for row in named]
        parse = ep.vllm_pooling if self.endpoint == "/pooling" else ep.vllm_classify
        rows = await self.client.map_batches(units, lambda b: ep.vllm_inputs(o.model, b), parse)
        return [self._output(row) for row in rows]

    def _output(self, row: list[float]) -> float:
        if self.options.output >= len(row):
            raise ScorerError(
                self.name,
                f"output {self.options.output} asked, but the server returned {len(row)}",
                hint="set output to an index the model has",
            )
        return row[self.options.output]

    def _label(self, row: dict[str, float]) -> float:
        label = self.options.label
        if label is None and len(row) == 1:
            return next(iter(row.values()))
        if label is None or label not in row:
            raise ScorerError(
                self.name,
                f"the server's labels are {', '.join(sorted(row))}"
                + ("" if label is None else f", not {label!r}"),
                hint="set label to the one whose score is the reward",
            )
        return row[label]


class ClassifierOptions(ServedOptions):
    """Options of ``http_text_classifier``."""

    labels: dict[str, float] = Field(min_length=1)
    """Label -> weight of its probability in the score. vLLM's /classify gives
    probabilities in class order: name labels by their index ("1"), or list the names
    in ``label_names``."""
    label_names: list[str] | None = None
    """vLLM: the model's labels in class order (its ``id2label``)."""
    multi_label: bool = False
    """Probabilities are independent (sigmoids), so several labels can be near 1 at once."""
    include_request: bool = False
    """Classify "request + answer" instead of the answer alone."""
    direction: Direction = "lower"


class ServedTextClassifier(ServedScorer):
    """Weighted label probabilities of each answer (e.g. P(toxic)), from the server."""

    Options = ClassifierOptions
    options: ClassifierOptions
    ENDPOINTS: ClassVar[dict[str, tuple[str, ...]]] = {"vllm": ("/classify",), "tei": ("/predict",)}

    def __init__(self, options: ClassifierOptions, *, name: str = "classifier") -> None:
        super().__init__(options, name=name)
        self.direction = options.direction
        weights = list(options.labels.values())
        if options.multi_label:
            self.value_range = (
                sum(min(w, 0.0) for w in weights),
                sum(max(w, 0.0) for w in weights),
            )
        else:
            self.value_range = (min([*weights, 0.0]), max([*weights, 0.0]))
        if self.value_range[0] == self.value_range[1]:
            self.value_range = (self.value_range[0], self.value_range[0] + 1.0)
        self.index: dict[int, float] = {}
        if options.server == "vllm":
            self.index = self._class_index(options)

    def _class_index(self, o: ClassifierOptions) -> dict[int, float]:
        index: dict[int, float] = {}
        for label, weight in o.labels.items():
            if o.label_names is not None and label in o.label_names:
                index[o.label_names.index(label)] = weight
            elif label.isdigit():
                index[int(label)] = weight
            else:
                raise ConfigError(
                    f"scorer {self.name!r}: vLLM's /classify gives probabilities by class "
                    f"index, and {label!r} is neither an index nor in label_names",
                    hint="list the model's labels in label_names, in class order",
                )
        return index

    async def rate(self, request: str, answers: list[str]) -> list[float]:
        return await self.rate_units(self.units(request, answers))

    def units(self, request: str, answers: list[str]) -> list[Any]:
        return [f"{request}\n{a}" if self.options.include_request else a for a in answers]

    async def rate_units(self, units: list[Any]) -> list[float]:
        o = self.options
        if o.server == "vllm":
            rows = await self.client.map_batches(
                units, lambda b: ep.vllm_inputs(o.model, b), ep.vllm_classify
            )
            return [self._weighted(row) for row in rows]
        named = await self.client.map_batches(
            [[t] for t in units],
            lambda b: ep.tei_predict_body(b, raw=False, truncate=o.truncate),
            ep.tei_predict,
        )
        return [self._weighted_names(row) for row in named]

    def _weighted(self, probs: list[float]) -> float:
        if self.index and max(self.index) >= len(probs):
            raise ScorerError(
                self.name, f"class {max(self.index)} asked, but the model has {len(probs)}"
            )
        return sum(w * probs[i] for i, w in self.index.items())

    def _weighted_names(self, probs: dict[str, float]) -> float:
        unknown = [label for label in self.options.labels if label not in probs]
        if unknown:
            raise ScorerError(
                self.name,
                f"the server returned no label {', '.join(map(repr, unknown))}",
                hint=f"its labels are: {', '.join(sorted(probs))}",
            )
        return sum(w * probs[label] for label, w in self.options.labels.items())


class EmbeddingOptions(ServedOptions):
    """Options of ``http_embedding``."""


class ServedEmbedding(ServedScorer):
    """Cosine similarity of the request and each answer, embedded by the server."""

    Options = EmbeddingOptions
    options: EmbeddingOptions
    ENDPOINTS: ClassVar[dict[str, tuple[str, ...]]] = {
        "vllm": ("/pooling", "/score"),
        "tei": ("/embed",),
    }
    direction = "higher"
    value_range = (0.0, 1.0)

    def __init__(self, options: EmbeddingOptions, *, name: str = "relevance") -> None:
        super().__init__(options, name=name)

    async def rate(self, request: str, answers: list[str]) -> list[float]:
        o = self.options
        if self.endpoint == "/score":
            return await self.rate_pairs(request, answers)

        def body(batch: list[str]) -> dict[str, Any]:
            # The request rides along in every batch: one more text, no second round trip.
            if o.server == "tei":
                return ep.tei_embed_body([request, *batch], truncate=o.truncate)
            return ep.vllm_inputs(o.model, [request, *batch])

        def parse(reply: Any, count: int) -> list[float]:
            read = ep.tei_embed if o.server == "tei" else ep.vllm_pooling
            vectors = read(reply, count + 1)
            return [_cosine(vectors[0], v) for v in vectors[1:]]

        return await self.client.map_batches(answers, body, parse)


def _cosine(a: list[float], b: list[float]) -> float:
    if len(a) != len(b):
        raise ValueError(f"vectors of {len(a)} and {len(b)} dimensions")
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(x * x for x in b))
    if na == 0 or nb == 0:
        return 0.0
    return sum(x * y for x, y in zip(a, b, strict=True)) / (na * nb)
