"""Tool calling: OpenAI's ``tools`` and ``tool_choice``, read once, and the tool gate.

A request may offer functions the answer can call. The backend is given them;
an answer that calls tools is checked on its calls, and fails the implicit gate
:data:`GATE` (``tools``) when it calls a function that was not offered, when its
arguments are not a JSON object the function's ``parameters`` schema accepts, or
when it breaks ``tool_choice`` (calls under ``none``, none under ``required``, or
another function than the one named).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

from aligntime.request import RequestError
from aligntime.structured import check_schema, loads, validator, violations
from aligntime.types import Candidate, ToolCall

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

GATE = "tools"
"""The implicit gate an answer fails when its tool calls break the request's tools."""

Mode = Literal["none", "auto", "required"]

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True, eq=False)
class Tool:
    """One function the answer may call."""

    name: str
    parameters: Mapping[str, Any] = field(default_factory=dict)
    """The JSON Schema of its arguments (an object); empty: any object."""
    description: str | None = None
    strict: bool = False

    def to_openai(self) -> dict[str, Any]:
        """The ``tools`` entry of an OpenAI-compatible request."""
        function: dict[str, Any] = {"name": self.name, "parameters": dict(self.parameters)}
        if self.description:
            function["description"] = self.description
        if self.strict:
            function["strict"] = True
        return {"type": "function", "function": function}

    @cached_property
    def _validator(self) -> Validator:
        return validator(self.parameters)

    def failures(self, arguments: str) -> tuple[str, ...]:
        """Why ``arguments`` are not a call of this function (nothing when they are)."""
        try:
            value = loads(arguments or "{}")
        except ValueError as exc:
            return (f"{self.name}: arguments are not JSON: {exc}",)
        if not isinstance(value, dict):
            return (f"{self.name}: arguments are not a JSON object",)
        return tuple(f"{self.name}: {v}" for v in violations(self._validator, value))


@dataclass(frozen=True, eq=False)
class ToolSet:
    """The tools a request offers and its ``tool_choice``."""

    tools: tuple[Tool, ...]
    mode: Mode = "auto"
    """``none``: no call; ``auto``: calls or text; ``required``: at least one call."""
    function: str | None = None
    """The one function a call must be to (a named ``tool_choice``); implies ``required``."""

    @classmethod
    def parse(cls, tools: Any, tool_choice: Any = None) -> ToolSet | None:
        """Read OpenAI's ``tools`` list and ``tool_choice``; ``None`` without tools.

        Raises :class:`~aligntime.request.RequestError` naming the field at fault
        (``tools[1].function.parameters``, ``tool_choice``, ...).
        """
        if tools is None or (isinstance(tools, Sequence) and not tools):
            if tool_choice not in (None, "none", "auto"):
                raise RequestError("tool_choice", "tool_choice needs tools, and none were given")
            return None
        if not isinstance(tools, Sequence) or isinstance(tools, str):
            raise RequestError("tools", "tools must be a list of function tools")
        parsed = [_tool(t, f"tools[{i}]") for i, t in enumerate(tools)]
        names = [t.name for t in parsed]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise RequestError(
                    f"tools[{i}].function.name", f"two tools are both named {name!r}"
                )
        mode, function = _choice(tool_choice, names)
        return cls(tuple(parsed), mode, function)

    def to_openai(self) -> dict[str, Any]:
        """``tools`` and ``tool_choice`` of an OpenAI-compatible request."""
        choice: Any = self.mode
        if self.function is not None:
            choice = {"type": "function", "function": {"name": self.function}}
        return {"tools": [t.to_openai() for t in self.tools], "tool_choice": choice}

    def failures(self, calls: Sequence[ToolCall]) -> tuple[str, ...]:
        """Why an answer making ``calls`` breaks these tools (nothing when it does not)."""
        if self.mode == "none" and calls:
            return ("a tool was called under tool_choice 'none'",)
        if not calls:
            if self.function is not None:
                return (f"no call of {self.function!r}, which tool_choice requires",)
            return (
                ("no tool call, which tool_choice 'required' asks for",)
                if (self.mode == "required")
                else ()
            )
        known = {t.name: t for t in self.tools}
        found: list[str] = []
        for call in calls:
            tool = known.get(call.name)
            if tool is None:
                found.append(f"{call.name!r} is not one of the tools offered")
            elif self.function is not None and call.name != self.function:
                found.append(f"{call.name!r} called, but tool_choice names {self.function!r}")
            else:
                found.extend(tool.failures(call.arguments))
        return tuple(found)


def _tool(value: Any, where: str) -> Tool:
    if not isinstance(value, Mapping) or value.get("type", "function") != "function":
        raise RequestError(f"{where}.type", f"{where} must be a function tool")
    function = value.get("function")
    if not isinstance(function, Mapping):
        raise RequestError(f"{where}.function", f"{where}.function must be an object")
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise RequestError(
            f"{where}.function.name",
            f"{where}.function.name must be 1 to 64 letters, digits, '_' or '-', got {name!r}",
        )
    parameters = function.get("parameters") or {}
    check_schema(parameters, f"{where}.function.parameters")
    description = function.get("description")
    return Tool(
        name,
        parameters,
        description if isinstance(description, str) else None,
        bool(function.get("strict") or False),
    )


def _choice(value: Any, names: Sequence[str]) -> tuple[Mode, str | None]:
    if value is None:
        return "auto", None
    if value in ("none", "auto", "required"):
        return value, None
    function = value.get("function") if isinstance(value, Mapping) else None
    name = function.get("name") if isinstance(function, Mapping) else None
    if not isinstance(name, str):
        raise RequestError(
            "tool_choice",
            "tool_choice must be 'none', 'auto', 'required' or "
            '{"type": "function", "function": {"name": ...}}',
        )
    if name not in names:
        raise RequestError(
            "tool_choice.function.name",
            f"tool_choice names {name!r}, which is not one of the tools: {', '.join(names)}",
        )
    return "required", name


def call_text(candidate: Candidate) -> str:
    """An answer with its tool calls written out, one ``name(arguments)`` a line after
    its text: what scorers read, so that a call is judged on what it would do."""
    calls = "\n".join(f"{c.name}({c.arguments})" for c in candidate.tool_calls)
    return f"{candidate.text}\n{calls}".strip()
