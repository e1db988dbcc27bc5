"""A reward model: a sequence-classification head that rates (request, answer).

The conversation and the candidate answer are written out with the reward
model's *own* tokenizer and chat template, which usually differ from the
generator's (a Skywork or ArmoRM reward model rating a Qwen or Llama
generator); without a template the text falls back to ``User: ...`` /
``Assistant: ...`` lines. One output is the raw reward; a model with several
named objectives (``num_labels > 1``) gives a weighted sum of them.

Example policy entry::

    - name: reward
      kind: reward_model
      model: /models/my-reward-model
      value_range: [-8, 8]
      objective_weights: {helpfulness: 0.7, correctness: 0.3}
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import model_validator

from aligntime import hf
from aligntime.errors import ConfigError
from aligntime.scorers.base import Direction
from aligntime.scorers.hf_common import SequenceModelOptions, SequenceModelScorer
from aligntime.types import Candidate, Message


class RewardModelOptions(SequenceModelOptions):
    """Options of the ``reward_model`` scorer."""

    objectives: list[str] | None = None
    """Names of the model's outputs, in order; default: the model's ``id2label``."""
    objective_weights: dict[str, float] | None = None
    """Weight of each named objective in the reward; default: the mean of all outputs."""
    value_range: tuple[float, float] = (-5.0, 5.0)
    """Raw rewards mapped to 0..1 for combining (values outside are clipped)."""
    direction: Direction = "higher"
    """Whether a higher reward is better."""

    @model_validator(mode="after")
    def _range_ordered(self) -> RewardModelOptions:
        low, high = self.value_range
        if not low < high:
            raise ValueError(f"value_range must be (low, high) with low < high, got {low}, {high}")
        return self


class RewardModel(SequenceModelScorer):
    """Raw reward of each candidate from a reward model (weighted objectives when several)."""

    Options = RewardModelOptions
    options: RewardModelOptions

    def __init__(self, options: RewardModelOptions, *, name: str = "reward") -> None:
        super().__init__(options, name=name)
        self.direction = options.direction
        self.value_range = options.value_range
        self.weights: list[float] = []
        self.objective_names: list[str] = []

    def configure(self, loaded: hf.LoadedModel) -> None:
        count = int(loaded.model.config.num_labels)
        o = self.options
        id2label = getattr(loaded.model.config, "id2label", None) or {}
        names = o.objectives or [str(id2label.get(i, f"LABEL_{i}")) for i in range(count)]
        if len(names) != count:
            raise ConfigError(
                f"reward model {o.model!r} has {count} outputs but objectives names {len(names)}",
                hint="list one name per output, in order, or leave objectives out",
            )
        self.objective_names = names
        if o.objective_weights is None:
            self.weights = [1.0 / count] * count
            return
        unknown = sorted(set(o.objective_weights) - set(names))
        if unknown:
            raise ConfigError(
                f"objective_weights names unknown objective(s) {', '.join(map(repr, unknown))}",
                hint=f"the objectives of {o.model!r} are: {', '.join(names)}",
            )
        self.weights = [o.objective_weights.get(name, 0.0) for name in names]

    def format(self, messages: Sequence[Message], answer: str) -> tuple[str, bool]:
        """The text the reward model reads, and whether its chat template wrote it."""
        tokenizer = self.loaded.tokenizer
        # System turns are left out: reward models are trained on user/assistant turns and
        # several of their templates reject a system role.
        conversation = [m.to_dict() for m in messages if m.role != "system"]
        conversation.append({"role": "assistant", "content": answer})
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(conversation, tokenize=False)
            return str(text), True
        lines = [f"{m['role'].capitalize()}: {m['content']}" for m in conversation]
        return "\n".join(lines), False

    def objective_values(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[dict[str, float]]:
        """Each candidate's raw output per named objective."""
        formatted = [self.format(messages, c.text) for c in candidates]
        templated = formatted[0][1] if formatted else False
        rows = self.logits([text for text, _ in formatted], templated=templated)
        return [dict(zip(self.objective_names, row, strict=True)) for row in rows]

    def score_sync(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        if not candidates:
            return []
        self.load()
        values = self.objective_values(messages, candidates)
        return [
            sum(w * v[name] for w, name in zip(self.weights, self.objective_names, strict=True))
            for v in values
        ]
