"""What a guard format is: how it writes its prompt, and how to read its answer.

A guard model is trained on one prompt layout; asked in any other it answers
unreliably. A format renders the whole prompt text itself (special tokens
included) from the conversation, the role being classified and the taxonomy,
so that the same text goes to a local model and to a served one, and a custom
taxonomy works even where the model's own chat template hard-codes its
categories. It also says which tokens the model must know and which marker
text its chat template carries, so that a model of another family is refused
at load instead of answering nonsense.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from aligntime.scorers.guard.taxonomy import Category, Role, Taxonomy
from aligntime.types import Message


@dataclass(frozen=True)
class Turn:
    """One turn of the conversation as a guard sees it."""

    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True)
class GuardPrompt:
    """One prompt to the guard model."""

    text: str
    """The complete prompt, special tokens included, ending where the model answers."""
    category: Category | None = None
    """For formats that ask about one category per prompt: that category."""


def guard_turns(messages: Sequence[Message], answer: str | None = None) -> list[Turn]:
    """The conversation as user and assistant turns, every turn kept.

    A system turn's text joins the next user turn (guard prompts have no system
    role, and the system text is part of what is being asked); consecutive turns of
    one role merge. Without ``answer`` (classifying the request) turns after the
    last user turn are dropped; with it, ``answer`` is the final assistant turn.
    """
    turns: list[Turn] = []
    pending_system: list[str] = []
    for message in messages:
        content = message.content.strip()
        if message.role == "system":
            if content:
                pending_system.append(content)
            continue
        if message.role == "user" and pending_system:
            content = "\n\n".join([*pending_system, content]).strip()
            pending_system = []
        # A tool's result is text the assistant was handed, as the user's is: the guard
        # judges it on the user's side.
        _append(turns, Turn("user" if message.role == "tool" else message.role, content))
    if pending_system:
        _append(turns, Turn("user", "\n\n".join(pending_system)))
    if answer is None:
        while turns and turns[-1].role == "assistant":
            turns.pop()
    else:
        _append(turns, Turn("assistant", answer.strip()))
    return turns


def _append(turns: list[Turn], turn: Turn) -> None:
    if turns and turns[-1].role == turn.role:
        turns[-1] = Turn(turn.role, f"{turns[-1].content}\n\n{turn.content}".strip())
    else:
        turns.append(turn)


def fold(turns: Sequence[Turn]) -> str:
    """Several turns as one text, for formats whose prompt has room for one message.

    One turn is its own text (the layout the model was trained on); more become a
    transcript with a ``User:`` / ``Assistant:`` label per turn, so that a request
    split over several turns is still read whole.
    """
    if len(turns) == 1:
        return turns[0].content
    return "\n\n".join(f"{'User' if t.role == 'user' else 'Assistant'}: {t.content}" for t in turns)


def split_answer(turns: Sequence[Turn]) -> tuple[list[Turn], str]:
    """The turns before the answer being classified, and the answer itself."""
    return list(turns[:-1]), turns[-1].content


def with_period(text: str) -> str:
    """``text`` with its first line ending in a full stop, as category lines are written."""
    first, sep, rest = text.partition("\n")
    first = first.rstrip()
    if not first.endswith((".", "!", "?")):
        first += "."
    return first + sep + rest


class GuardFormat(ABC):
    """One guard model family's prompt layout and answer."""

    name: ClassVar[str]
    """The ``format`` option value."""
    title: ClassVar[str]
    """The model family, for messages ("Llama Guard 3")."""
    special_tokens: ClassVar[tuple[str, ...]]
    """Tokens the rendered prompt writes that the model's tokenizer must know as one token."""
    template_markers: ClassVar[tuple[str, ...]]
    """Text the model's own chat template contains (empty: the model ships none)."""
    per_category: ClassVar[bool] = False
    """True when one prompt asks about one category (the model names none itself)."""
    verdict_tokens: ClassVar[int]
    """New tokens enough to reach the verdict."""
    category_tokens: ClassVar[int]
    """New tokens enough to read the verdict and the categories the model names."""

    @abstractmethod
    def render(self, turns: Sequence[Turn], role: Role, taxonomy: Taxonomy) -> list[GuardPrompt]:
        """The prompt(s) that classify the last turn of ``turns`` (of ``role``)."""

    @abstractmethod
    def verdict_words(self, role: Role) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The words of an unsafe and of a safe verdict."""

    def max_new_tokens(self, role: Role, *, categories: bool) -> int:
        """Tokens to generate: enough for the verdict, and the categories when asked."""
        return self.category_tokens if categories else self.verdict_tokens

    def verdict_marker(self, role: Role) -> str:
        """Text the model writes right before its verdict (empty: the verdict comes first)."""
        return ""

    def parse_categories(
        self, output: str, role: Role, taxonomy: Taxonomy, *, finished: bool
    ) -> list[Category]:
        """The categories the model's ``output`` names (formats that name none: empty).

        ``finished`` is False when the output was cut by the token budget, so that a
        category cut in half is not reported.
        """
        return []
