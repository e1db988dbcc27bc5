"""The prompting lever: turn a user's conversation into what the model sees.

``PromptPolicy.apply`` is pure: it prepends the system information (role,
rules and a list of principles), then the demonstrations as earlier turns of
the conversation (tuning-free in-context alignment in the style of URIAL: a
few stylistic examples steer a frozen model), then the user's conversation,
with the last user message wrapped by the chosen task template.

A *steered* prompt policy (:meth:`PromptPolicy.steered`) is what the input gate
switches to for a risky request: the steer's template replaces the request's,
its system text replaces the policy's, and its principles are added.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from aligntime.errors import InputError
from aligntime.policy.schema import Demonstration, PromptSpec, SteerSpec, Template
from aligntime.registry import suggest
from aligntime.types import Message


@dataclass(frozen=True)
class PromptPolicy:
    """System information, principles, demonstrations and named templates."""

    system: str = ""
    principles: tuple[str, ...] = ()
    demonstrations: tuple[Demonstration, ...] = ()
    templates: dict[str, Template] = field(default_factory=dict)
    default_template: str | None = None
    steer: SteerSpec | None = None
    """The input gate's stricter prompt, applied on top of everything else (see steered)."""

    @classmethod
    def from_spec(cls, spec: PromptSpec) -> PromptPolicy:
        return cls(
            system=spec.system,
            principles=tuple(spec.principles),
            demonstrations=tuple(spec.demonstrations),
            templates=dict(spec.templates),
            default_template=spec.default_template,
        )

    def steered(self, steer: SteerSpec) -> PromptPolicy:
        """This prompt policy under the input gate's steer prompt.

        An unknown steer template is an :class:`InputError` here, not on the first
        steered request.
        """
        if steer.template is not None:
            self.template(steer.template)
        return replace(self, steer=steer)

    def template(self, name: str | None) -> Template | None:
        """The template a request picked (or the default); an error with suggestions if unknown."""
        chosen = name or self.default_template
        if self.steer is not None and self.steer.template is not None:
            chosen = self.steer.template
        if chosen is None:
            return None
        if chosen not in self.templates:
            raise InputError(
                f"unknown template {chosen!r}",
                hint=suggest(chosen, sorted(self.templates))
                if self.templates
                else "this policy defines no templates",
            )
        return self.templates[chosen]

    def system_text(self, template: Template | None = None) -> str:
        """The system message: role and rules, then the principles as a list."""
        system = template.system if template and template.system is not None else self.system
        principles = list(
            template.principles if template and template.principles is not None else self.principles
        )
        if self.steer is not None:
            system = self.steer.system if self.steer.system is not None else system
            principles += self.steer.principles
        parts = [system.strip()] if system.strip() else []
        if principles:
            parts.append("Follow these principles:\n" + "\n".join(f"- {p}" for p in principles))
        return "\n\n".join(parts)

    def apply(self, messages: Sequence[Message], template: str | None = None) -> list[Message]:
        """The conversation the generator sees for the user's ``messages``."""
        chosen = self.template(template)
        out: list[Message] = []
        system = self.system_text(chosen)
        # A caller's own system messages come after the policy's rules, in one message,
        # because many chat templates accept a single system message only.
        user_system = [m.content for m in messages if m.role == "system"]
        merged = "\n\n".join([s for s in [system, *user_system] if s])
        if merged:
            out.append(Message("system", merged))
        demos = (
            chosen.demonstrations
            if chosen and chosen.demonstrations is not None
            else self.demonstrations
        )
        for demo in demos:
            out.append(Message("user", demo.user))
            out.append(Message("assistant", demo.assistant))
        conversation = [m for m in messages if m.role != "system"]
        last_user = max((i for i, m in enumerate(conversation) if m.role == "user"), default=None)
        for i, message in enumerate(conversation):
            if i == last_user and chosen is not None:
                # str.replace, not str.format: braces in user text must stay literal.
                message = Message("user", chosen.prompt.replace("{prompt}", message.content))
            out.append(message)
        return out
