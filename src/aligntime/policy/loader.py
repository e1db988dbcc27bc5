"""Load a policy from a preset name or a YAML file, with errors that point at the line.

Validation runs in two passes: the policy's own schema, then each selected
implementation's ``Options`` model over the keys of its section (through
:func:`aligntime.registry.validate`, the check :func:`aligntime.registry.build`
makes). The validated options stay on their section, so building the aligner
does not validate them again. Either way, an error names the file, the line and
the dotted field path.
"""

from __future__ import annotations

from functools import partial
from importlib import resources
from pathlib import Path

import yaml
from pydantic import ValidationError

from aligntime import registry
from aligntime.errors import ConfigError
from aligntime.policy.schema import Policy
from aligntime.registry import Loc, Where


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
        # Composing first is safe: an alias is one shared node, however often it is used.
        root = yaml.compose(text)
        _check_expansion(root, origin)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{origin}:{mark.line + 1}:{mark.column + 1}" if mark else origin
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: invalid YAML: {problem}") from exc
    except RecursionError:
        raise ConfigError(f"{origin}: invalid YAML: nested too deeply") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: a policy must be a YAML mapping, got {type(data).__name__}")
    line = partial(_line, root)
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        raise Where(origin, line=line).invalid(exc) from exc
    for kind, loc, section in policy.sections():
        at = Where(origin, loc, line)
        section.bind(
            registry.validate(kind, section.implementation, section.options(), where=at), at
        )
    return policy


MAX_EXPANDED_VALUES = 100_000
"""Most values (scalars, lists, mappings) a policy may hold once its aliases are expanded."""
MAX_EXPANDED_CHARS = 10_000_000
"""Most characters of scalar text a policy may hold once its aliases are expanded."""


def _check_expansion(root: yaml.Node | None, origin: str) -> None:
    """Refuse YAML whose aliases expand without bound (a "billion laughs") or loop.

    PyYAML loads an alias as a reference to one shared object, so loading is
    cheap; what the policy feeds (a request body built from ``extra_body``, a
    validation, a dump) copies every reference and runs out of memory. The
    expanded size is counted on the node graph, each shared node once.
    """
    if root is None:
        return
    sizes: dict[int, tuple[int, int]] = {}
    size = _expanded(root, sizes, set(), origin)
    if size[0] <= MAX_EXPANDED_VALUES and size[1] <= MAX_EXPANDED_CHARS:
        return
    # Name the deepest mapping key that holds the excess (descending into lists would
    # only repeat the same alias).
    node, path, line = root, "", 0
    while isinstance(node, yaml.MappingNode):
        big = [(k, v) for k, v in node.value if _excessive(sizes[id(v)])]
        if not big:
            break
        key, node = max(big, key=lambda kv: sizes[id(kv[1])])
        path = f"{path}.{key.value}" if path else str(key.value)
        line = key.start_mark.line + 1
    values, chars = sizes[id(node)]
    where = f"{origin}:{line}: {path}" if path else origin
    raise ConfigError(
        f"{where}: YAML aliases expand this to {values:,} values and {chars:,} characters, "
        f"more than a policy may hold ({MAX_EXPANDED_VALUES:,} values, "
        f"{MAX_EXPANDED_CHARS:,} characters)",
        hint="write the values out instead of repeating aliases",
    )


def _excessive(size: tuple[int, int]) -> bool:
    return size[0] > MAX_EXPANDED_VALUES or size[1] > MAX_EXPANDED_CHARS


def _expanded(
    node: yaml.Node, sizes: dict[int, tuple[int, int]], open_: set[int], origin: str
) -> tuple[int, int]:
    """(values, characters) of ``node`` with every alias expanded; memoised by node."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise ConfigError(
            f"{origin}:{node.start_mark.line + 1}: an alias refers to itself "
            "(a recursive YAML anchor), which no policy value can be"
        )
    open_.add(key)
    values, chars = 1, 0
    if isinstance(node, yaml.ScalarNode):
        chars = len(node.value)
    elif isinstance(node, yaml.SequenceNode):
        for child in node.value:
            v, c = _expanded(child, sizes, open_, origin)
            values, chars = values + v, chars + c
    elif isinstance(node, yaml.MappingNode):
        for k, v_node in node.value:
            for child in (k, v_node):
                v, c = _expanded(child, sizes, open_, origin)
                values, chars = values + v, chars + c
    open_.discard(key)
    sizes[key] = (values, chars)
    return values, chars


def _line(root: yaml.Node | None, loc: Loc) -> int | None:
    """The line of the deepest YAML node that ``loc`` reaches (None: no node)."""
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
    return found.start_mark.line + 1 if found is not None else None
