"""Lazy registry of generators, scorers and strategies.

Names map to ``"module:Class"`` strings read from Python entry points, so that
listing what exists imports nothing heavy (``aligntime --help`` never imports
torch). aligntime's own backends register through the same entry-point groups
as third-party plugins do (see ``pyproject.toml``): there is one source of
truth, and a plugin package only needs an entry point to appear here.
"""

from __future__ import annotations

import difflib
import importlib
from functools import cache
from importlib.metadata import entry_points
from typing import Literal

from aligntime.errors import ConfigError

Kind = Literal["generator", "scorer", "strategy"]

GROUPS: dict[Kind, str] = {
    "generator": "aligntime.generators",
    "scorer": "aligntime.scorers",
    "strategy": "aligntime.strategies",
}

# How the policy file names the key that selects an implementation, for messages.
_FIELD = {"generator": "backend", "scorer": "kind", "strategy": "kind"}


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
