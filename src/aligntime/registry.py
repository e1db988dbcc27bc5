"""Lazy registry of generators, scorers and strategies.

Names map to ``"module:Class"`` strings read from Python entry points, so that
listing what exists imports nothing heavy (``aligntime --help`` never imports
torch). aligntime's own backends register through the same entry-point groups
as third-party plugins do (see ``pyproject.toml``): there is one source of
truth, and a plugin package only needs an entry point to appear here.

An implementation declares its options as a pydantic model in its class attribute
``Options`` (see the base classes); :func:`build` is the one way to make an
instance from a policy section's keys: it validates them against that model once,
and a mistake is a :class:`ConfigError` naming the file, the line and the field.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.metadata import entry_points
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from aligntime.errors import ConfigError

Kind = Literal["generator", "scorer", "strategy"]
KINDS: tuple[Kind, ...] = ("generator", "scorer", "strategy")

Loc = tuple[str | int, ...]
"""A field path inside a policy: ``("scorers", 0, "max_chars")``."""

GROUPS: dict[Kind, str] = {
    "generator": "aligntime.generators",
    "scorer": "aligntime.scorers",
    "strategy": "aligntime.strategies",
}

# How the policy file names the key that selects an implementation, for messages.
_FIELD = {"generator": "backend", "scorer": "kind", "strategy": "kind"}


class OptionsModel(BaseModel):
    """Base of the ``Options`` models: an unknown key is an error, and each field's
    docstring is its description in the JSON schema (``aligntime policies schema``)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


@cache
def available(kind: Kind) -> dict[str, str]:
    """Registered names of one kind, mapped to their ``module:Class`` targets."""
    found = {ep.name: ep.value for ep in entry_points(group=GROUPS[kind])}
    if not found:
        raise ConfigError(
            f"no {kind} implementations are registered",
            hint="aligntime's entry points are missing: reinstall it with `pip install -e .`",
        )
    return dict(sorted(found.items()))


def suggest(name: str, choices: list[str]) -> str:
    """A "did you mean ...?" hint for a mistyped name, or the list of choices."""
    # Long names typed short ("smollm2" for "smollm2-135m-instruct") match by prefix.
    lowered = name.lower()
    close = [
        c
        for c in choices
        if lowered
        and difflib.SequenceMatcher(None, lowered, c.lower()[: len(lowered)]).ratio() >= 0.75
    ]
    close += difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    close = list(dict.fromkeys(close))[:3]
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    return "choose one of: " + ", ".join(choices)


def dotted(loc: Loc) -> str:
    """A field path as the policy file spells it: ``scorers[0].max_chars``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass(frozen=True)
class Where:
    """Where a section's keys come from, so that an error can name the file, line and field.

    ``origin`` names the file (or the preset, or the object being built); ``loc`` is the
    section's field path in it; ``line`` maps a field path to its line number, when
    the text is at hand; ``hint`` is added to every error about the section.
    """

    origin: str
    loc: Loc = ()
    line: Callable[[Loc], int | None] | None = None
    hint: str | None = None

    def at(self, *more: str | int) -> str:
        """``origin:LINE: field.path`` for a field below the section (or the section)."""
        loc = (*self.loc, *more)
        number = self.line(loc) if self.line is not None else None
        prefix = f"{self.origin}:{number}" if number is not None else self.origin
        return f"{prefix}: {dotted(loc)}" if loc else prefix

    def error(self, message: str, *more: str | int, hint: str | None = None) -> ConfigError:
        """A :class:`ConfigError` about the field ``more`` below the section."""
        return ConfigError(f"{self.at(*more)}: {message}", hint=hint or self.hint)

    def invalid(self, exc: ValidationError) -> ConfigError:
        """The first problem of a validation error, at its field; the count of the others."""
        errors = exc.errors()
        first = errors[0]
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown field"
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        return self.error(message + more, *first["loc"])


def resolve(kind: Kind, name: str) -> type:
    """Import and return the class registered as ``name``.

    Raises :class:`ConfigError` with a suggestion when the name is unknown.
    """
    names = available(kind)
    target = names.get(name)
    if target is None:
        raise ConfigError(
            f"unknown {kind} {_FIELD[kind]} {name!r}", hint=suggest(name, list(names))
        )
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        from aligntime.extras import extra_for

        extra = extra_for(exc)
        raise ConfigError(
            f"the {kind} {name!r} cannot be imported: {exc}",
            hint=f"pip install 'aligntime[{extra}]'"
            if extra
            else "install the package it needs (see its documentation)",
        ) from exc
    cls = getattr(module, attr, None)
    if not isinstance(cls, type):
        raise ConfigError(f"the {kind} entry point {name!r} -> {target!r} is not a class")
    return cls


def options_model(cls: type) -> type[BaseModel] | None:
    """The ``Options`` model an implementation declares (None: it takes no options)."""
    model = getattr(cls, "Options", None)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def validate(
    kind: Kind, name: str, options: Mapping[str, Any] | BaseModel, *, where: Where | None = None
) -> BaseModel | None:
    """The registered ``name``'s options, validated against its ``Options`` model.

    ``options`` that already are an instance of that model are returned as they are
    (validated once). ``None`` means the implementation takes no options (and none
    were given). Every problem is a :class:`ConfigError` at ``where``.
    """
    try:
        cls = resolve(kind, name)
    except ConfigError as exc:
        if where is None:
            raise
        raise where.error(exc.message, _FIELD[kind], hint=exc.hint) from exc
    at = where or Where(f"{kind} {name!r}")
    model = options_model(cls)
    if model is None:
        given = sorted(options) if isinstance(options, Mapping) else options
        if given:
            raise at.error(f"{name!r} takes no options, got {given}")
        return None
    if isinstance(options, model):
        return options
    data = options.model_dump(exclude_unset=True) if isinstance(options, BaseModel) else options
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise at.invalid(exc) from exc


def build(
    kind: Kind,
    name: str,
    options: Mapping[str, Any] | BaseModel | None = None,
    /,
    *,
    where: Where | None = None,
    **kwargs: Any,
) -> Any:
    """An instance of the ``kind`` registered as ``name``, made from its policy options.

    ``options`` are the section's keys (validated here, see :func:`validate`) or an
    already validated ``Options``; ``kwargs`` go to the constructor (a scorer's
    ``name``). This is the one way policies, the CLI, the server and evaluation
    make generators, scorers and strategies.
    """
    validated = validate(kind, name, {} if options is None else options, where=where)
    cls = resolve(kind, name)
    return cls(**kwargs) if validated is None else cls(validated, **kwargs)


def selector(kind: Kind) -> str:
    """The policy key that names a ``kind``'s implementation: ``backend`` or ``kind``."""
    return _FIELD[kind]


def option_schemas(kind: Kind) -> dict[str, dict[str, Any]]:
    """The JSON schema of every registered ``kind``'s options, by name (field docstrings
    are the descriptions). One that cannot be imported here describes why instead."""
    schemas: dict[str, dict[str, Any]] = {}
    for name in available(kind):
        try:
            model = options_model(resolve(kind, name))
        except ConfigError as exc:
            schemas[name] = {"description": f"not importable here: {exc}"}
            continue
        schemas[name] = model.model_json_schema() if model else {"description": "no options"}
    return schemas
