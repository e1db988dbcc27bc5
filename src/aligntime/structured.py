"""Structured output: OpenAI's ``response_format``, read once and checked on every answer.

A request may ask that the answer be a JSON object (``{"type": "json_object"}``)
or JSON that a JSON Schema accepts (``{"type": "json_schema", "json_schema":
{"name": ..., "schema": {...}}}``). Backends that constrain decoding pass it on
(llama.cpp turns it into a grammar); whatever the backend did, each candidate is
checked here, and one that is not valid JSON, or that the schema rejects, fails
the implicit gate :data:`GATE` (``response_format``) and is never chosen.
"""

from __future__ import annotations

import gc
import json
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from aligntime.request import RequestError

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

GATE = "response_format"
"""The implicit gate an answer fails when it does not have the requested shape."""

FormatKind = Literal["json_object", "json_schema"]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
"""What OpenAI allows as ``json_schema.name`` (and as a function's name)."""


@dataclass(frozen=True, eq=False)
class ResponseFormat:
    """The shape every answer must have: a JSON object, or JSON a schema accepts."""

    kind: FormatKind
    schema: Mapping[str, Any] | None = None
    """The JSON Schema (``json_schema`` only)."""
    name: str = "response"
    """The schema's name (``json_schema.name``)."""
    strict: bool = False
    """OpenAI's ``json_schema.strict``: passed on; every answer is checked either way."""
    description: str | None = field(default=None)
    """What the schema is for (``json_schema.description``), passed on."""

    @classmethod
    def parse(cls, value: Any, where: str = "response_format") -> ResponseFormat | None:
        """Read OpenAI's ``response_format`` object; ``None`` for ``{"type": "text"}``.

        Raises :class:`~aligntime.request.RequestError` naming the field at fault
        (``response_format.json_schema.schema``, ...).
        """
        if isinstance(value, ResponseFormat):
            return value
        if not isinstance(value, Mapping):
            raise RequestError(where, f"{where} must be an object, got {_kind(value)}")
        kind = value.get("type")
        if kind == "text":
            return None
        if kind == "json_object":
            return cls("json_object")
        if kind != "json_schema":
            raise RequestError(
                f"{where}.type",
                f"{where}.type must be 'text', 'json_object' or 'json_schema', got {kind!r}",
            )
        spec = value.get("json_schema")
        inner = f"{where}.json_schema"
        if not isinstance(spec, Mapping):
            raise RequestError(inner, f"{inner} must be an object, got {_kind(spec)}")
        name = spec.get("name", "response")
        if not isinstance(name, str) or not _NAME.match(name):
            raise RequestError(
                f"{inner}.name",
                f"{inner}.name must be 1 to 64 letters, digits, '_' or '-', got {name!r}",
            )
        schema = spec.get("schema", {})
        check_schema(schema, f"{inner}.schema")
        description = spec.get("description")
        return cls(
            "json_schema",
            schema,
            name,
            bool(spec.get("strict") or False),
            description if isinstance(description, str) else None,
        )

    def to_openai(self) -> dict[str, Any]:
        """The ``response_format`` object of an OpenAI-compatible request."""
        if self.kind == "json_object":
            return {"type": "json_object"}
        spec: dict[str, Any] = {"name": self.name, "schema": dict(self.schema or {})}
        if self.strict:
            spec["strict"] = True
        if self.description:
            spec["description"] = self.description
        return {"type": "json_schema", "json_schema": spec}

    def failures(self, text: str) -> tuple[str, ...]:
        """Why ``text`` does not have this shape (nothing when it does)."""
        try:
            value = loads(text)
        except ValueError as exc:
            return (f"invalid JSON: {exc}",)
        if self.kind == "json_object" or self.schema is None:
            return () if isinstance(value, dict) else (f"not a JSON object but {_kind(value)}",)
        return violations(self._validator, value)

    @cached_property
    def _validator(self) -> Validator:
        return validator(self.schema or {})


def loads(text: str) -> Any:
    """Strict JSON: ``NaN`` and ``Infinity`` are not JSON, whatever Python's parser allows."""

    def refuse(token: str) -> float:
        raise ValueError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


def check_schema(schema: Any, where: str) -> None:
    """Refuse a schema that is not a valid JSON Schema, naming ``where`` it was given."""
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    if not isinstance(schema, Mapping):
        raise RequestError(where, f"{where} must be a JSON Schema object, got {_kind(schema)}")
    # jsonschema looks the dialect up by ``$schema`` before it checks anything, and
    # fails on one that is not a string (a list is unhashable): refuse it here.
    dialect = schema.get("$schema", "")
    if not isinstance(dialect, str):
        raise RequestError(
            f"{where}.$schema", f"{where}.$schema must be a string, got {_kind(dialect)}"
        )
    try:
        with _no_cyclic_gc():  # a schema nested too deeply recurses to the limit too
            validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        at = "/".join(str(p) for p in exc.path)
        raise RequestError(
            where, f"{where} is not a valid JSON Schema{f' (at {at})' if at else ''}: {exc.message}"
        ) from None
    except RecursionError:
        raise RequestError(where, f"{where} is nested too deeply") from None
    _check_references(schema, where)
    # A reference cycle that consumes no part of the value ({"$ref": "#"}) recurses
    # without end on every value: found here on a few small ones, it is the request's fault.
    probe = validator(schema)
    samples: tuple[Any, ...] = (None, {}, [], "", 0)
    try:
        with _no_cyclic_gc():
            for value in samples:
                for _ in probe.iter_errors(value):
                    pass
    except RecursionError:
        raise RequestError(
            where, f"{where} refers to itself without end (a $ref cycle that reads nothing)"
        ) from None


class _CollectorPause:
    """Counts the threads inside a deep probe; the first in pauses the cyclic garbage
    collector and the last out restores it, so no thread waits on another's probe
    and a nested pause is harmless."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inside = 0
        self.was_enabled = False


_pause = _CollectorPause()


@contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while a probe recurses to the limit.

    A collection that starts near the recursion limit runs the finalizers of
    unrelated garbage (a closed socket, a generator) there; they fail with their
    own RecursionError, reported as "exception ignored" and turned into a failure
    by pytest's hook. A probe takes milliseconds.
    """
    with _pause.lock:
        if _pause.inside == 0:
            _pause.was_enabled = gc.isenabled()
            gc.disable()
        _pause.inside += 1
    try:
        yield
    finally:
        with _pause.lock:
            _pause.inside -= 1
            if _pause.inside == 0 and _pause.was_enabled:
                gc.enable()


def _check_references(schema: Mapping[str, Any], where: str) -> None:
    """Refuse a schema with a ``$ref`` (or ``$dynamicRef``) that does not resolve within
    itself or the JSON Schema meta-schemas.

    Checking an answer would otherwise fail on it (a server error where the request was
    at fault), and jsonschema fetches a reference to an unknown URL over the network
    (a client could make the server request any address). The lookups here use a
    registry that never retrieves, so nothing is fetched.
    """
    from jsonschema_specifications import REGISTRY
    from referencing import Resource
    from referencing.exceptions import Unresolvable
    from referencing.jsonschema import DRAFT202012

    root = Resource.from_contents(schema, default_specification=DRAFT202012)
    pending = [(REGISTRY.resolver_with_root(root), root)]
    while pending:  # a loop, not recursion: a deeply nested schema cannot overflow it
        resolver, resource = pending.pop()
        contents = resource.contents
        if isinstance(contents, Mapping):
            for key in ("$ref", "$dynamicRef"):
                if key not in contents:
                    continue
                ref = contents[key]
                if not isinstance(ref, str):  # older drafts' meta-schemas allow any type
                    raise RequestError(where, f"{where} has a {key} that is not a string")
                try:
                    resolver.lookup(ref)
                except Unresolvable:
                    raise RequestError(
                        where,
                        f"{where} has a {key} that does not resolve within the schema: {ref!r} "
                        "(only references into the schema itself are followed)",
                    ) from None
        pending.extend((resolver.in_subresource(sub), sub) for sub in resource.subresources())


def validator(schema: Mapping[str, Any]) -> Validator:
    """A validator for ``schema`` (already checked), of the draft the schema names."""
    from jsonschema.validators import validator_for

    return validator_for(schema)(schema)


def violations(check: Validator, value: Any, limit: int = 3) -> tuple[str, ...]:
    """The first ``limit`` ways ``value`` breaks the schema, each with where it does."""
    found = []
    try:
        with _no_cyclic_gc():
            for error in check.iter_errors(value):
                at = "/".join(str(p) for p in error.absolute_path)
                found.append(f"{at or '(root)'}: {error.message}")
                if len(found) == limit:
                    break
    except RecursionError:
        # A reference cycle only this value walks into: the answer cannot be shown to
        # fit, so it fails (closed) rather than the request failing with a server error.
        return (*found, "(root): the schema refers to itself without end on this value")
    return tuple(found)


def _kind(value: Any) -> str:
    names = {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }
    if value is None:
        return "null"
    return names.get(type(value), f"a {type(value).__name__}")
