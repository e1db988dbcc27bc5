"""The policy file: what a deployment of aligntime does, validated with pydantic.

Sections that select an implementation (``generator.backend``, ``scorers[].kind``,
``strategy.kind``) accept that implementation's own options inline; the loader
checks them against the implementation's ``Options`` model, so an unknown or
misspelt option is an error that names its field, and keeps the validated model
on the section for :func:`aligntime.registry.build`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from aligntime.registry import Kind, Loc, Where

DEFAULT_FALLBACK = (
    "I'm sorry, I can't give a good answer to that. If this is urgent or about your "
    "health or safety, please contact a qualified professional or local emergency services."
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _WithOptions(BaseModel):
    """A section whose unknown keys are the selected implementation's options."""

    model_config = ConfigDict(extra="allow")
    _selector: ClassVar[str] = "kind"
    _validated: BaseModel | None = PrivateAttr(default=None)
    _validated_from: dict[str, Any] | None = PrivateAttr(default=None)
    _where: Where | None = PrivateAttr(default=None)

    @property
    def implementation(self) -> str:
        """The registered name this section selects (its ``backend`` or ``kind``)."""
        return str(getattr(self, self._selector))

    def options(self) -> dict[str, Any]:
        """The implementation-specific keys of this section."""
        return dict(self.model_extra or {})

    def bind(self, validated: BaseModel | None, where: Where) -> None:
        """Keep the options the loader validated and where the section is in its file."""
        self._validated, self._where = validated, where
        self._validated_from = self.options()

    def build_options(self) -> BaseModel | dict[str, Any]:
        """What :func:`~aligntime.registry.build` takes: the validated options when the
        loader checked them (so they are validated once), else the section's keys.

        ``model_copy(update=...)`` copies private attributes, so a copy whose keys were
        changed after loading would otherwise build from the stale validated options.
        """
        current = self.options()
        if self._validated is not None and current == self._validated_from:
            return self._validated
        return current

    @property
    def where(self) -> Where | None:
        """Where the loader found this section (None: the policy was made in code)."""
        return self._where


class Demonstration(_Strict):
    """One in-context example exchange."""

    user: str = Field(min_length=1)
    """What the user says."""
    assistant: str = Field(min_length=1)
    """The answer in the style and substance the policy wants."""


class Template(_Strict):
    """A named per-task template a request can pick."""

    prompt: str = "{prompt}"
    """How the user's request is wrapped; must contain ``{prompt}``."""
    system: str | None = None
    """Replaces the policy's system text for this task when set."""
    principles: list[str] | None = None
    """Replaces the policy's principles for this task when set."""
    demonstrations: list[Demonstration] | None = None
    """Replaces the policy's demonstrations for this task when set."""

    @field_validator("prompt")
    @classmethod
    def _has_slot(cls, value: str) -> str:
        if "{prompt}" not in value:
            raise ValueError("a template's prompt must contain {prompt}")
        return value


class PromptSpec(_Strict):
    """The prompting lever: system information, principles, demonstrations, templates."""

    system: str = ""
    """Role and rules, sent as the system message."""
    principles: list[str] = Field(default_factory=list)
    """Principles appended to the system message as a list."""
    demonstrations: list[Demonstration] = Field(default_factory=list)
    """Example exchanges placed before the conversation (in-context alignment)."""
    templates: dict[str, Template] = Field(default_factory=dict)
    """Per-task templates by name."""
    default_template: str | None = None
    """Template used when a request names none."""

    @model_validator(mode="after")
    def _default_exists(self) -> PromptSpec:
        if self.default_template and self.default_template not in self.templates:
            raise ValueError(f"default_template {self.default_template!r} is not in templates")
        return self


class GeneratorSpec(_WithOptions):
    """The generator: a backend and its options (model, temperature, max_tokens, ...)."""

    backend: str = "llamacpp"
    """Registered backend name: llamacpp, fake, ..."""

    _selector: ClassVar[str] = "backend"


class GateSpec(_Strict):
    """Bounds on a scorer's raw value that a candidate must satisfy to be eligible."""

    min: float | None = None
    """The raw value must be at least this."""
    max: float | None = None
    """The raw value must be at most this."""

    @model_validator(mode="after")
    def _one_bound(self) -> GateSpec:
        if self.min is None and self.max is None:
            raise ValueError("a gate needs min or max")
        return self


class ScorerSpec(_WithOptions):
    """One scorer: a kind, a name, its weight, an optional gate, and its options."""

    name: str = Field(min_length=1)
    """Name of this scorer in results (unique within the policy)."""
    kind: str
    """Registered scorer kind: classifier, judge, embedding, rules, refusal, ..."""
    weight: float = Field(1.0, ge=0.0)
    """Weight of the normalised score in the combined score (0: gate or report only)."""
    gate: GateSpec | None = None
    """Raw-value bounds; a candidate outside them is not eligible."""
    lazy: bool = False
    """Run this scorer only on the candidates that can still be chosen, after the other
    scorers. A scorer of weight w moves a combined score by at most w / (sum of weights),
    so a candidate whose score without the lazy scorers trails the leader's by more than
    the lazy weights' share can never win an argmax; it is not rated by them (their
    names are absent from its ``scores``, its ``score`` counts them as 0). Exact for
    strategies that only compare candidates with the leader (best_of_n, rejection,
    adaptive); every other strategy, and ``ascore`` and evaluation pools, rate every
    candidate. For expensive scorers (an LLM judge). Needs weight > 0 and no gate."""

    @field_validator("lazy")
    @classmethod
    def _lazy_ranks_only(cls, value: bool, info: ValidationInfo) -> bool:
        # ``weight`` and ``gate`` are declared before ``lazy``, so they are validated already.
        if not value:
            return value
        if info.data.get("weight", 1.0) <= 0:
            raise ValueError(
                "a lazy scorer needs weight > 0: it is skipped only where its weight cannot "
                "change the choice, and a weight-0 scorer only gates or reports"
            )
        if info.data.get("gate") is not None:
            raise ValueError(
                "a lazy scorer cannot have a gate: a candidate it skips would have no value "
                "to hold the gate against (use a separate, eager scorer for the gate)"
            )
        return value


class InputScorerSpec(_WithOptions):
    """One input scorer: rates the request before any candidate is sampled.

    It has the shape of an output scorer (a kind, a name and the kind's options) and is
    called through :meth:`~aligntime.scorers.base.Scorer.score_request` on the whole
    conversation. Its thresholds choose the gate's action: at or past ``refuse`` the
    request is refused, at or past ``steer`` it is sampled under the steer prompt.
    """

    name: str = Field(min_length=1)
    """Name of this input scorer in results (unique within the input section)."""
    kind: str
    """Registered scorer kind: guard, classifier, text_classifier, a trained scorer, ..."""
    refuse: float | None = None
    """Refuse the request (no sampling) when the value is at or past this threshold."""
    steer: float | None = None
    """Sample under the input section's ``steer`` prompt when the value is at or past this
    threshold (a milder one than ``refuse``)."""
    trigger: Literal["above", "below"] | None = None
    """Which side of a threshold acts: ``above`` for a risk (P(harmful), P(unsafe)),
    ``below`` for a safety score (higher is safer). Default: ``above`` for the harm
    scorer and for kinds whose direction is "lower" (lower is better), else ``below``."""
    harm: bool = False
    """This scorer's value is the request's probability of being harmful (0..1); output
    scorers that read the assessment use it (e.g. ``appropriate_refusal``). At most one."""
    advice: bool = False
    """This scorer's value is the request's probability of needing a qualified
    professional (medical, mental-health, legal or financial advice about the user's own
    situation); output scorers that read the assessment use it to prefer a referral
    (``appropriate_refusal``). At most one, and not the harm scorer."""
    steer_with: str | None = None
    """Name of the steer in the input section's ``steers`` this scorer's ``steer``
    threshold applies (default: the section's ``steer``)."""

    @model_validator(mode="after")
    def _ordered(self) -> InputScorerSpec:
        if self.harm and self.trigger == "below":
            raise ValueError("the harm scorer's value is P(harmful): its trigger is 'above'")
        if self.advice and self.trigger == "below":
            raise ValueError(
                "the advice scorer's value is P(needs a professional): its trigger is 'above'"
            )
        if self.advice and self.harm:
            raise ValueError("one input scorer cannot set both harm: true and advice: true")
        if self.steer_with is not None and self.steer is None:
            raise ValueError(
                f"steer_with ({self.steer_with!r}) needs a steer threshold on this scorer"
            )
        # Without a trigger the side depends on the scorer kind; the aligner checks it then.
        if self.refuse is None or self.steer is None or self.trigger is None:
            return self
        if (self.steer > self.refuse) if self.trigger == "above" else (self.steer < self.refuse):
            raise ValueError(
                f"steer ({self.steer}) must be a milder threshold than refuse ({self.refuse})"
            )
        return self


class SteerSpec(_Strict):
    """The stricter prompt a steered request is sampled under."""

    template: str | None = None
    """Name of a template in ``prompt.templates``; it replaces the request's own template."""
    system: str | None = None
    """Replaces the system text (the policy's or the template's) when set."""
    principles: list[str] = Field(default_factory=list)
    """Principles added after the policy's (or the template's) principles."""
    offer_refusal: bool = False
    """Add the input section's refusal text (default: the policy's fallback) to a steered
    request's candidates as one more candidate (``origin: refusal``), scored like the
    sampled ones: a small model that rarely refuses on its own still has a refusal to
    choose, and the scorers (a reward that reads the harm estimate) decide whether it wins."""
    offer_referral: bool = False
    """Add the input section's ``referral`` text (a pointer to qualified help that is not
    a refusal) to a steered request's candidates (``origin: referral``), scored like the
    sampled ones: a request that needs a professional gets one answer that says so."""

    @model_validator(mode="after")
    def _something(self) -> SteerSpec:
        if self.template is None and self.system is None and not self.principles:
            raise ValueError("steer needs a template, a system text or principles")
        return self


class InputSpec(_Strict):
    """The input gate: scorers that read the whole conversation before any sampling."""

    scorers: list[InputScorerSpec] = Field(min_length=1)
    """Input scorers; they run concurrently, once per request."""
    steer: SteerSpec | None = None
    """The prompt a request is sampled under when an input scorer reaches its ``steer``
    threshold (required when one has such a threshold)."""
    steers: dict[str, SteerSpec] = Field(default_factory=dict)
    """Named steers, for input scorers whose ``steer_with`` names one (e.g. ``advice``:
    give general information, recommend the right professional, offer the referral)."""
    refusal: str | None = None
    """Text returned when the gate refuses; default: the policy's ``fallback``."""
    referral: str | None = None
    """Text a steer with ``offer_referral`` offers: it points the user to qualified help
    and must not read as a refusal (checked with the rules the evaluation counts by)."""

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        names = [s.name for s in self.scorers]
        dupes = sorted({x for x in names if names.count(x) > 1})
        if dupes:
            raise ValueError(f"input scorer names must be unique; repeated: {', '.join(dupes)}")
        if sum(s.harm for s in self.scorers) > 1:
            raise ValueError("at most one input scorer may set harm: true")
        if sum(s.advice for s in self.scorers) > 1:
            raise ValueError("at most one input scorer may set advice: true")
        for i, spec in enumerate(self.scorers):
            if spec.steer_with is not None and spec.steer_with not in self.steers:
                known = ", ".join(sorted(self.steers)) or "none"
                raise ValueError(
                    f"scorers[{i}].steer_with: no steer named {spec.steer_with!r} in "
                    f"input.steers (defined: {known})"
                )
        self._check_referral()
        steering = [s.name for s in self.scorers if s.steer is not None and s.steer_with is None]
        if steering and self.steer is None:
            raise ValueError(
                f"input scorer {steering[0]!r} has a steer threshold but the input section "
                "has no steer prompt (add steer: {template: NAME} or steer: {principles: [...]})"
            )
        return self

    def _check_referral(self) -> None:
        """A steer that offers the referral needs one, and it must be a referral."""
        # Imported here: the rules live with the scorers, which import this module's users.
        from aligntime.scorers.rules import is_refusal, is_safe_redirect

        named = {"steer": self.steer} | {f"steers.{k}": v for k, v in self.steers.items()}
        offering = [k for k, v in named.items() if v is not None and v.offer_referral]
        if offering and not (self.referral or "").strip():
            raise ValueError(
                f"{offering[0]}.offer_referral is set but input.referral has no text "
                "(add referral: a pointer to qualified help)"
            )
        if self.referral is None:
            return
        if is_refusal(self.referral):
            raise ValueError(
                "referral reads as a refusal (it opens like 'I can't help'); a referral "
                "offers help: point the user to the professional who can decide"
            )
        if not is_safe_redirect(self.referral):
            raise ValueError(
                "referral must point the user to qualified help in its first sentences "
                "(e.g. 'please talk to a doctor, pharmacist or lawyer ...')"
            )


class StrategySpec(_WithOptions):
    """How the answer is chosen: a strategy kind and its options."""

    kind: str = "best_of_n"
    """Registered strategy: best_of_n, rejection, soft_best_of_n, vote, passthrough,
    adaptive, early_rejection, guided (or a plugin's)."""


class Policy(_Strict):
    """A complete alignment policy."""

    name: str = Field(min_length=1)
    """Name shown in results and served as the model name by the server."""
    description: str = ""
    """One line on what the policy is for."""
    generator: GeneratorSpec = Field(default_factory=GeneratorSpec)
    """The generator backend and its options."""
    n: int = Field(5, ge=1)
    """Candidates sampled per request by default."""
    max_n: int = Field(16, ge=1, le=1024)
    """Largest N a request may ask for."""
    budget: int | None = Field(None, ge=1)
    """Most candidates one request may sample in all, resampling included (default 3 x n)."""
    prompt: PromptSpec = Field(default_factory=PromptSpec)
    """The prompting lever."""
    scorers: list[ScorerSpec] = Field(default_factory=list)
    """Scorers; they run concurrently on every candidate."""
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    """How the answer is chosen."""
    fallback: str = DEFAULT_FALLBACK
    """Text returned when no candidate is eligible."""
    on_scorer_error: Literal["raise", "degrade"] = "raise"
    """``raise``: a failing scorer fails the request. ``degrade``: its scores are missing
    (counted as 0), and if it gates, no candidate passes (fail closed); a failing input
    scorer refuses the request (fail closed)."""
    input: InputSpec | None = None
    """The input gate, run once per request before any sampling (none: every request is
    sampled, as without a gate)."""

    @model_validator(mode="after")
    def _consistent(self) -> Policy:
        if self.n > self.max_n:
            raise ValueError(f"n ({self.n}) is larger than max_n ({self.max_n})")
        names = [s.name for s in self.scorers]
        dupes = sorted({x for x in names if names.count(x) > 1})
        if dupes:
            raise ValueError(f"scorer names must be unique; repeated: {', '.join(dupes)}")
        # A failing scorer is reported by name, and a failing input scorer refuses the
        # request: one name for two scorers would make that verdict ambiguous.
        shared = sorted(set(names) & {s.name for s in self.input_scorers})
        if shared:
            raise ValueError(
                f"input scorers and scorers need different names; both use: {', '.join(shared)}"
            )
        return self

    @field_validator("input")
    @classmethod
    def _steer_template_exists(cls, value: InputSpec | None, info: ValidationInfo) -> Any:
        # ``prompt`` is declared before ``input``, so it is validated already.
        prompt = info.data.get("prompt")
        steer = value.steer if value else None
        if steer is None or steer.template is None or not isinstance(prompt, PromptSpec):
            return value
        if steer.template not in prompt.templates:
            known = ", ".join(sorted(prompt.templates)) or "none"
            raise ValueError(
                f"steer.template {steer.template!r} is not in prompt.templates (templates: {known})"
            )
        return value

    def sections(self) -> list[tuple[Kind, Loc, _WithOptions]]:
        """Every section that selects an implementation: its kind and its field path."""
        found: list[tuple[Kind, Loc, _WithOptions]] = [
            ("generator", ("generator",), self.generator),
            ("strategy", ("strategy",), self.strategy),
        ]
        found += [("scorer", ("scorers", i), s) for i, s in enumerate(self.scorers)]
        found += [("scorer", ("input", "scorers", i), s) for i, s in enumerate(self.input_scorers)]
        return found

    @property
    def input_scorers(self) -> list[InputScorerSpec]:
        """The input gate's scorers (empty without an input section)."""
        return list(self.input.scorers) if self.input else []

    @property
    def total_budget(self) -> int:
        return self.budget or 3 * self.n
