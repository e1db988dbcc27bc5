"""An instruction model as judge: P("Yes") to a rubric question.

The judge model reads the request (every user turn of the conversation), one
answer and a yes/no question (by default: is the answer helpful, on topic and
harmless?). Its next-token log-probabilities give P(yes) / (P(yes) + P(no)), a
graded score rather than a sampled verdict. Any generator backend that returns
log-probabilities can judge. On the embedded backend the judge shares the
generator's loaded model when both name the same file; the default judge has a
file of its own (SmolLM2-135M as Q8_0), on which prompts evaluate faster. The N
judgements run one at a time: on the embedded engine batched one-token probes
cost more in the unified KV cache than a sequence of probes that reuse each
other's cached prompt prefix.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

from pydantic import ConfigDict, Field

from aligntime.errors import ConfigError
from aligntime.generators.base import Generator
from aligntime.registry import OptionsModel, Where, build
from aligntime.scorers.base import Scorer, request_text
from aligntime.types import Candidate, Message

DEFAULT_QUESTION = (
    "Does the response answer the request directly, correctly and helpfully, "
    "without rudeness and without helping anyone cause harm?"
)

SYSTEM = (
    "You are a strict evaluator of assistant responses. You read a user's request "
    "and one response, then answer the question about the response with a single "
    "word: Yes or No."
)


class JudgeModelOptions(OptionsModel):
    """What every LLM judge takes: the model that judges, and how much it reads."""

    model_config = ConfigDict(extra="forbid")

    backend: str = "llamacpp"
    """Generator backend that runs the judge model (it must return log-probabilities)."""
    model: str = "smollm2-135m-instruct-q8_0"
    """Catalogue name or path of the judge model (the served model name for openai). The
    default is the embedded SmolLM2-135M requantised to Q8_0: a judge's work is nearly all
    prompt evaluation, which llama.cpp does about 1.5x faster on Q8_0 than on the Q4_1
    file the generator decodes with, and its verdicts on the labelled pairs are the same."""
    max_answer_chars: int = Field(600, ge=50)
    """Characters of an answer shown to the judge (long answers are cut; on the pairs set
    600 scored as well as 1500 at well under half the cost)."""
    max_request_chars: int = Field(1500, ge=50)
    """Characters of the request shown to the judge: every user turn of the conversation,
    the oldest text cut first when they are longer."""
    top_k: int = Field(20, ge=2, le=100)
    """How many most likely first tokens are searched for the verdict's tokens."""
    backend_options: dict[str, Any] = Field(default_factory=dict)
    """Further options for the judge's backend (e.g. ``base_url`` for openai, ``threads``)."""


class JudgeOptions(JudgeModelOptions):
    """Options of the ``judge`` scorer."""

    question: str = DEFAULT_QUESTION
    """The yes/no rubric question asked about every answer."""


class ModelJudge(Scorer):
    """Base of the LLM judges: a probability in 0..1 read from a judge model."""

    direction = "higher"
    value_range = (0.0, 1.0)

    def __init__(self, options: JudgeModelOptions, *, name: str) -> None:
        self.name = name
        where = Where(
            f"judge backend {options.backend!r}",
            hint="set the backend's options under the scorer's backend_options",
        )
        backend = {"model": options.model, **options.backend_options}
        self.generator: Generator = build("generator", options.backend, backend, where=where)
        if not self.generator.capabilities.logprobs:
            raise ConfigError(
                f"judge backend {options.backend!r} cannot return log-probabilities",
                hint="choose a backend such as llamacpp, transformers or openai",
            )

    def load(self) -> None:
        self.generator.load()

    def close(self) -> None:
        self.generator.close()


class Judge(ModelJudge):
    """P(yes) in 0..1 from a judge model's log-probabilities; higher is better."""

    Options = JudgeOptions
    options: JudgeOptions

    def __init__(self, options: JudgeOptions | None = None, *, name: str = "judge") -> None:
        self.options = options or JudgeOptions()
        super().__init__(self.options, name=name)

    def prompt(self, request: str, answer: str) -> list[Message]:
        """The judge conversation for one answer."""
        cut = answer[: self.options.max_answer_chars]
        body = (
            f"Request:\n{request.strip()}\n\nResponse:\n{cut.strip() or '(empty)'}\n\n"
            f"Question: {self.options.question}\nAnswer Yes or No."
        )
        return [Message("system", SYSTEM), Message("user", body)]

    async def score(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        request = request_text(messages, self.options.max_request_chars)
        tops = await asyncio.gather(
            *(
                self.generator.next_token_logprobs(self.prompt(request, c.text), self.options.top_k)
                for c in candidates
            )
        )
        return [p_yes(top) for top in tops]


def p_yes(top_logprobs: dict[str, float]) -> float:
    """P(yes) / (P(yes) + P(no)) from a token -> log-probability map; 0.5 if neither appears."""
    yes = no = 0.0
    for token, logprob in top_logprobs.items():
        word = token.strip().strip(".,!:").lower()
        if word == "yes":
            yes += math.exp(logprob)
        elif word == "no":
            no += math.exp(logprob)
    if yes + no == 0.0:
        return 0.5
    return yes / (yes + no)
