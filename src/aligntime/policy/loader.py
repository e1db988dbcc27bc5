"""Load a policy from a preset name or a YAML file, with errors that point at the line.

Validation runs in two passes: the policy's own schema, then each selected
implementation's ``Options`` model over the keys of its section. Either way,
an error names the file, the line and the dotted field path.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from aligntime import registry
from aligntime.errors import ConfigError
from aligntime.policy.schema import Policy

Loc = tuple[str | int, ...]


def preset_names() -> list[str]:
    """Names of the policies shipped inside the package."""
    folder = resources.files("aligntime.policy") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_text(name: str) -> str:
    return (resources.files("aligntime.policy") / "presets" / f"{name}.yaml").read_text("utf-8")


def load_policy(name_or_path: str | Path) -> Policy:
    """A validated policy from a preset name or a path to a YAML file."""
    source = str(name_or_path)
    path = Path(source).expanduser()
    if source in preset_names():
        text, origin = preset_text(source), f"preset:{source}"
    elif path.is_file():
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read policy file {path}: {exc}") from exc
        origin = str(path)
    elif path.suffix in (".yaml", ".yml") or "/" in source:
        raise ConfigError(f"policy file {source} does not exist")
    else:
        raise ConfigError(
            f"unknown policy {source!r}",
            hint=registry.suggest(source, preset_names()) + ", or give a path to a YAML file",
        )
    return parse_policy(text, origin)


def parse_policy(text: str, origin: str = "<string>") -> Policy:
    """Validate policy YAML text; ``origin`` names it in error messages."""
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{origin}:{mark.line + 1}:{mark.column + 1}" if mark else origin
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: a policy must be a YAML mapping, got {type(data).__name__}")
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, origin, root, ()) from exc
    _check_options(policy, origin, root)
    return policy


def _check_options(policy: Policy, origin: str, root: yaml.Node | None) -> None:
    """Validate each implementation's inline options against its Options model."""
    sections: list[tuple[registry.Kind, str, dict[str, Any], Loc]] = [
        ("generator", policy.generator.backend, policy.generator.options(), ("generator",)),
        ("strategy", policy.strategy.kind, policy.strategy.options(), ("strategy",)),
    ]
    for i, spec in enumerate(policy.scorers):
        sections.append(("scorer", spec.kind, spec.options(), ("scorers", i)))
    for i, ispec in enumerate(policy.input_scorers):
        sections.append(("scorer", ispec.kind, ispec.options(), ("input", "scorers", i)))
    for kind, name, options, loc in sections:
        try:
            cls = registry.resolve(kind, name)
        except ConfigError as exc:
            field = "backend" if kind == "generator" else "kind"
            line = _line(root, (*loc, field))
            raise ConfigError(
                f"{origin}{line}: {_dotted((*loc, field))}: {exc.message}", hint=exc.hint
            ) from exc
        model = getattr(cls, "Options", None)
        if model is None:
            if options:
                raise ConfigError(
                    f"{origin}: {_dotted(loc)}: {name!r} takes no options, got {sorted(options)}"
                )
            continue
        try:
            validate_options(model, options)
        except ValidationError as exc:
            raise _config_error(exc, origin, root, loc) from exc


def validate_options(model: type[BaseModel], options: dict[str, Any]) -> BaseModel:
    return model.model_validate(options)


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line(root: yaml.Node | None, loc: Loc) -> str:
    """``:LINE`` of the deepest YAML node that ``loc`` reaches, or empty."""
    node = root
    found = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == part), None)
            if match is None:
                break
            found, node = match[0], match[1]
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
            found = node
        else:
            break
    if found is None and node is not None and node is not root:
        found = node
    return f":{found.start_mark.line + 1}" if found is not None else ""


def _config_error(
    exc: ValidationError, origin: str, root: yaml.Node | None, base: Loc
) -> ConfigError:
    errors = exc.errors()
    first = errors[0]
    loc: Loc = (*base, *first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    elif first["type"] == "missing":
        message = "required field is missing"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    field = f" {_dotted(loc)}:" if loc else ""
    return ConfigError(f"{origin}{_line(root, loc)}:{field} {message}{more}")
