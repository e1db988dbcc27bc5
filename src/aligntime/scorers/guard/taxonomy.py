"""Guard categories are data: the default taxonomy of each format, and a policy's own.

The defaults live in ``taxonomies.yaml`` next to this module, in the words each
model was trained on. A policy replaces a format's taxonomy with the scorer's
``categories`` option (``{S1: "Violent crimes", ...}``) and keeps a subset with
``select`` (``[S1, S9]``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aligntime.errors import ConfigError

Role = Literal["user", "assistant"]
"""Which turn a guard classifies: the user's request, or an assistant's answer."""

ROLES: tuple[Role, ...] = ("user", "assistant")

SHORT_NAME_CHARS = 40
"""A custom category's text this short (one line) doubles as its name in reports."""


@dataclass(frozen=True)
class Category:
    """One category of a guard's policy."""

    code: str
    """What the model answers with ("S1", "Violent") or what a per-category prompt asks
    about ("harm"); reports use it."""
    name: str
    """A short human name for reports ("Violent Crimes")."""
    text: str
    """What the prompt shows for it: a name, a guideline or a risk definition."""

    def __str__(self) -> str:
        return self.code if self.name == self.code else f"{self.code} {self.name}"


class _Entry(BaseModel):
    """One category as ``taxonomies.yaml`` writes it."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1)
    name: str | None = None
    text: str | None = None
    user: str | None = None
    assistant: str | None = None
    roles: list[Role] = Field(default_factory=lambda: list(ROLES))

    def category(self, role: Role) -> Category | None:
        if role not in self.roles:
            return None
        name = self.name or self.code
        text = (self.user if role == "user" else self.assistant) or self.text or name
        return Category(self.code, name, text.strip())


class _FormatTaxonomy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    categories: list[_Entry]
    default_select: list[str] | None = None


@dataclass(frozen=True)
class Taxonomy:
    """The categories a guard asks about, per role, in the prompt's order."""

    user: tuple[Category, ...]
    assistant: tuple[Category, ...]

    def for_role(self, role: Role) -> tuple[Category, ...]:
        return self.user if role == "user" else self.assistant

    @property
    def codes(self) -> list[str]:
        """Every code, in order, each once."""
        return list(dict.fromkeys(c.code for c in (*self.user, *self.assistant)))

    def find(self, answer: str, role: Role) -> Category | None:
        """The category the model named ``answer`` (a code or a name, any case)."""
        key = answer.strip().casefold()
        for category in self.for_role(role):
            if key in (category.code.casefold(), category.name.casefold()):
                return category
        return None

    def select(self, codes: Sequence[str]) -> Taxonomy:
        """Only the categories whose code is in ``codes`` (in the taxonomy's order)."""
        unknown = [c for c in codes if c not in self.codes]
        if unknown:
            raise ConfigError(
                "select names unknown categories: " + ", ".join(repr(c) for c in unknown),
                hint="known codes: " + (", ".join(self.codes) or "none"),
            )
        keep = set(codes)
        return Taxonomy(
            tuple(c for c in self.user if c.code in keep),
            tuple(c for c in self.assistant if c.code in keep),
        )


@cache
def _defaults() -> dict[str, _FormatTaxonomy]:
    text = resources.files("aligntime.scorers.guard").joinpath("taxonomies.yaml").read_text()
    raw = yaml.safe_load(text)
    try:
        return {name: _FormatTaxonomy.model_validate(data) for name, data in raw.items()}
    except ValidationError as exc:  # pragma: no cover - the shipped file is tested
        raise ConfigError(f"taxonomies.yaml is malformed: {exc}") from exc


def default_taxonomy(format_name: str) -> Taxonomy:
    """The taxonomy ``format_name``'s prompt lists by default (its ``default_select``)."""
    data = _defaults().get(format_name)
    if data is None:
        raise ConfigError(f"no default taxonomy for guard format {format_name!r}")
    taxonomy = _build(data.categories)
    return taxonomy.select(data.default_select) if data.default_select else taxonomy


def full_taxonomy(format_name: str) -> Taxonomy:
    """Every category ``taxonomies.yaml`` has for ``format_name``, selected or not."""
    data = _defaults().get(format_name)
    if data is None:
        raise ConfigError(f"no default taxonomy for guard format {format_name!r}")
    return _build(data.categories)


def custom_taxonomy(categories: Mapping[str, str]) -> Taxonomy:
    """A policy's own taxonomy: code -> the text the prompt shows, for both roles."""
    entries = []
    for code, text in categories.items():
        text = text.strip()
        if not code.strip() or not text:
            raise ConfigError(
                f"category {code!r} needs a code and a text",
                hint='write categories as {S1: "Violent crimes", ...}',
            )
        short = len(text) <= SHORT_NAME_CHARS and "\n" not in text
        name = text.rstrip(".") if short else code
        entries.append(_Entry(code=code.strip(), name=name, text=text))
    return _build(entries)


def _build(entries: Sequence[_Entry]) -> Taxonomy:
    def pick(role: Role) -> tuple[Category, ...]:
        return tuple(c for e in entries if (c := e.category(role)) is not None)

    return Taxonomy(pick("user"), pick("assistant"))
