"""The ``guard`` scorer: a deployed guard model's P(unsafe), and the categories it names.

::

    - name: guard
      kind: guard
      format: llama-guard-3          # llama-guard-4, shieldgemma, granite-guardian-3,
                                     # wildguard, qwen3guard
      role: assistant                # or user: classify the request (the input gate)
      backend: openai                # or transformers (a local folder)
      model: meta-llama/Llama-Guard-3-8B
      backend_options: {base_url: http://localhost:8001/v1}
      gate: {max: 0.5}

The value is P(unsafe) in 0..1 (lower is better), read from the log-probabilities
of the guard's verdict token. The violated categories are parsed from the guard's
answer where the format names them (Llama Guard's ``S1,S10``, Qwen3Guard's
``Categories:`` line) and, for formats that ask about one category per prompt
(ShieldGemma, Granite Guardian), are those whose prompt reached
``category_threshold``. :meth:`GuardScorer.score_details` and
:meth:`GuardScorer.score_request_details` return them as labels with the value
(one model pass gives both), so a failed gate names them:
``guard (S1 Violent Crimes, S10 Hate)``.

A guard is a safety gate, so it fails closed: a backend that fails, or an answer
with no readable verdict, raises :class:`~aligntime.errors.ScorerError` and the
policy's ``on_scorer_error`` decides (a gate with a missing value passes nothing).
A model that the format does not fit is a :class:`~aligntime.errors.ConfigError`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from aligntime.errors import AligntimeError, ConfigError, ScorerError
from aligntime.generators.openai import OpenAIOptions
from aligntime.registry import OptionsModel
from aligntime.scorers.base import Candidates, MaybeAssessment, Messages, Scorer
from aligntime.scorers.guard.backends import (
    GuardBackend,
    OpenAIGuard,
    TransformersGuard,
    TransformersGuardOptions,
)
from aligntime.scorers.guard.formats import (
    Controversial,
    FormatName,
    GuardFormat,
    GuardPrompt,
    guard_turns,
    make_format,
)
from aligntime.scorers.guard.taxonomy import (
    Category,
    Role,
    Taxonomy,
    custom_taxonomy,
    default_taxonomy,
    full_taxonomy,
)
from aligntime.scorers.guard.verdict import Continuation, VerdictError, read_verdict
from aligntime.types import Candidate, Message, ScoreDetail

log = logging.getLogger(__name__)

Backend = Literal["transformers", "openai"]


class GuardOptions(OptionsModel):
    """Options of the ``guard`` scorer."""

    model_config = ConfigDict(extra="forbid")

    format: FormatName
    """The guard model's prompt format: llama-guard-3, llama-guard-4, shieldgemma,
    granite-guardian-3, wildguard or qwen3guard."""
    model: str = Field(min_length=1)
    """Local model folder or GGUF file (transformers), or the served model name (openai)."""
    role: Role = "assistant"
    """``assistant``: classify each candidate answer in its conversation; ``user``: classify
    the user's request (every turn of the conversation), as the input gate does."""
    backend: Backend = "transformers"
    """Where the guard runs: a local Hugging Face model, or an OpenAI-compatible server
    (vLLM) that returns log-probabilities from /completions."""
    backend_options: dict[str, Any] = Field(default_factory=dict)
    """transformers: device, dtype, gguf_file, threads, batch_tokens. openai: base_url
    (required), api_key_env, timeout_s, max_retries, concurrency, extra_body, ..."""
    categories: dict[str, str] | None = None
    """A custom taxonomy, code -> the text the prompt shows (``{S1: "Violent crimes"}``;
    for ShieldGemma a guideline, for Granite Guardian a risk definition). Default: the
    format's own (see taxonomies.yaml)."""
    select: list[str] | None = None
    """Codes of the taxonomy to ask about (default: all; Granite Guardian: harm)."""
    top_k: int = Field(20, ge=2, le=100)
    """How many most likely tokens at the verdict are searched for the verdict words."""
    read_categories: bool = True
    """Generate the guard's answer past the verdict to read the categories it names."""
    max_new_tokens: int | None = Field(None, ge=1, le=512)
    """Tokens the guard may generate (default: what the format needs)."""
    category_threshold: float = Field(0.5, ge=0.0, le=1.0)
    """Per-category formats: a category is reported at or above this P(unsafe)."""
    controversial: Controversial = "unsafe"
    """qwen3guard only: count its "Controversial" verdict as unsafe (strict) or safe."""
    check_template: bool = True
    """Refuse a model whose tokenizer lacks the format's special tokens or template."""

    @model_validator(mode="after")
    def _consistent(self) -> GuardOptions:
        if "controversial" in self.model_fields_set and self.format != "qwen3guard":
            raise ValueError("controversial applies to format qwen3guard only")
        if self.format == "wildguard" and (self.categories or self.select):
            raise ValueError("wildguard's policy is fixed: it takes no categories or select")
        try:
            self.taxonomy()
            self.backend_settings()
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return self

    def taxonomy(self) -> Taxonomy:
        """The categories the guard asks about."""
        if self.categories is not None:
            taxonomy = custom_taxonomy(self.categories)
        elif self.select is not None:
            taxonomy = full_taxonomy(self.format)
        else:
            return default_taxonomy(self.format)
        return taxonomy.select(self.select) if self.select is not None else taxonomy

    def backend_settings(self) -> TransformersGuardOptions | OpenAIOptions:
        """``backend_options`` checked against the backend's own options."""
        try:
            if self.backend == "openai":
                return OpenAIOptions(model=self.model, **self.backend_options)
            return TransformersGuardOptions(**self.backend_options)
        except (ValidationError, TypeError) as exc:
            if isinstance(exc, ValidationError):
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or '(options)'}: {e['msg']}"
                    for e in exc.errors()
                )
            else:
                problems = str(exc)
            raise ConfigError(
                f"invalid backend_options for the {self.backend} backend: {problems}"
            ) from exc


@dataclass(frozen=True)
class GuardVerdict:
    """What the guard said about one text."""

    p_unsafe: float
    """P(unsafe) in 0..1 (the scorer's value)."""
    categories: tuple[Category, ...] = ()
    """The violated categories, most certain first; ``str(c)`` reads "S1 Violent Crimes"."""
    outputs: tuple[str, ...] = ()
    """The guard's greedy answer to each prompt (one per category for per-category formats)."""

    def detail(self) -> ScoreDetail:
        """The scorer's value with the categories as labels."""
        return ScoreDetail(self.p_unsafe, tuple(str(c) for c in self.categories))


class GuardScorer(Scorer):
    """P(unsafe) from a guard model (Llama Guard, ShieldGemma, Granite Guardian, ...)."""

    Options = GuardOptions
    options: GuardOptions
    direction = "lower"
    value_range = (0.0, 1.0)
    reports_details = True
    """:meth:`score_details` and :meth:`score_request_details` label each value with the
    violated categories."""

    def __init__(self, options: GuardOptions, *, name: str = "guard") -> None:
        self.options = options
        self.name = name
        self.format: GuardFormat = make_format(options.format, controversial=options.controversial)
        self.taxonomy = options.taxonomy()
        settings = options.backend_settings()
        self.backend: GuardBackend = (
            OpenAIGuard(settings)
            if isinstance(settings, OpenAIOptions)
            else TransformersGuard(options.model, settings)
        )
        self._checked = not options.check_template

    # --- the Scorer contract --------------------------------------------------------------

    async def score(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[float]:
        return [v.p_unsafe for v in await self.verdicts(messages, candidates)]

    async def score_request(self, messages: Sequence[Message]) -> float:
        return (await self.request_verdict(messages)).p_unsafe

    async def score_details(
        self, messages: Messages, candidates: Candidates, *, assessment: MaybeAssessment = None
    ) -> list[ScoreDetail]:
        """P(unsafe) per candidate, labelled with the violated categories ("S1 Violent Crimes")."""
        return [v.detail() for v in await self.verdicts(messages, candidates)]

    async def score_request_details(self, messages: Sequence[Message]) -> ScoreDetail:
        """The request's P(unsafe), labelled with the violated categories."""
        return (await self.request_verdict(messages)).detail()

    def load(self) -> None:
        self.backend.load()
        if not self._checked and isinstance(self.backend, TransformersGuard):
            # The local check needs no event loop: fail at load, before any request.
            self.backend.check_sync(self.format)
            self._checked = True

    def close(self) -> None:
        self.backend.close()

    # --- verdicts with their categories ----------------------------------------------------

    async def verdicts(
        self, messages: Sequence[Message], candidates: Sequence[Candidate]
    ) -> list[GuardVerdict]:
        """One verdict per candidate, in order; with ``role: user``, the request's for each."""
        if not candidates:
            return []
        if self.options.role == "user":
            verdict = await self.request_verdict(messages)
            return [verdict] * len(candidates)
        prompt_sets = [
            self.format.render(guard_turns(messages, c.text), "assistant", self.taxonomy)
            for c in candidates
        ]
        return await self._judge(prompt_sets, "assistant")

    async def request_verdict(self, messages: Sequence[Message]) -> GuardVerdict:
        """The verdict on the user's request: every turn of ``messages``, system turns too.

        Whatever ``role`` says, this classifies the request: before sampling there is
        no answer to classify.
        """
        prompts = self.format.render(guard_turns(messages), "user", self.taxonomy)
        [verdict] = await self._judge([prompts], "user")
        return verdict

    async def _judge(
        self, prompt_sets: Sequence[Sequence[GuardPrompt]], role: Role
    ) -> list[GuardVerdict]:
        if any(not prompts for prompts in prompt_sets):
            raise ConfigError(
                f"guard {self.name!r} has no category to ask about for the {role} role",
                hint="the taxonomy (categories or select) leaves none for this role",
            )
        flat = [p for prompts in prompt_sets for p in prompts]
        continuations = await self._complete([p.text for p in flat], role)
        verdicts = []
        start = 0
        for prompts in prompt_sets:
            done = continuations[start : start + len(prompts)]
            start += len(prompts)
            verdicts.append(self._verdict(prompts, done, role))
        return verdicts

    async def _complete(self, prompts: list[str], role: Role) -> list[Continuation]:
        """Run the backend; every failure but a misconfiguration becomes a ScorerError."""
        o = self.options
        want_categories = o.read_categories and not self.format.per_category
        budget = o.max_new_tokens or self.format.max_new_tokens(role, categories=want_categories)
        try:
            if not self._checked:
                await self.backend.check(self.format)
                self._checked = True
            return await self.backend.complete(prompts, budget, o.top_k)
        except ConfigError:
            raise
        except AligntimeError as exc:
            raise ScorerError(self.name, exc.message, hint=exc.hint) from exc
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise
        except Exception as exc:
            raise ScorerError(self.name, f"{type(exc).__name__}: {exc}") from exc

    def _verdict(
        self, prompts: Sequence[GuardPrompt], done: Sequence[Continuation], role: Role
    ) -> GuardVerdict:
        unsafe, safe = self.format.verdict_words(role)
        marker = self.format.verdict_marker(role)
        values = []
        for continuation in done:
            try:
                values.append(read_verdict(continuation, marker, unsafe, safe))
            except VerdictError as exc:
                raise ScorerError(
                    self.name,
                    f"guard model {self.options.model!r} ({self.format.name}) gave no verdict: "
                    f"{exc}",
                    hint=f"check that the model is a {self.format.title} model, or raise top_k "
                    "or max_new_tokens",
                ) from exc
        outputs = tuple(c.text for c in done)
        if self.format.per_category:
            ranked = sorted(zip(values, prompts, strict=True), key=lambda vp: -vp[0])
            found = tuple(
                p.category
                for v, p in ranked
                if p.category is not None and v >= self.options.category_threshold
            )
            return GuardVerdict(max(values), found, outputs)
        categories: tuple[Category, ...] = ()
        if self.options.read_categories:
            categories = tuple(
                self.format.parse_categories(
                    done[0].text, role, self.taxonomy, finished=done[0].finished
                )
            )
        return GuardVerdict(values[0], categories, outputs)
