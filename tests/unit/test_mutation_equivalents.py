"""The hand-judged equivalent mutants (scripts/mutation-equivalent.txt) still describe code.

A block whose removed lines no longer occur in its module matches no mutant: the list
would go stale silently while the judgement it records is lost from view. This reads
the list with the mutation report's own parser, so it sees what the report sees.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
LIST = ROOT / "scripts" / "mutation-equivalent.txt"


def _report() -> ModuleType:
    """scripts/mutation_report.py, loaded from its file (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "mutation_report", ROOT / "scripts" / "mutation_report.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutation_report"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _entries() -> list[tuple[str, Counter[str], str]]:
    entries: list[tuple[str, Counter[str], str]] = _report().load_equivalents(LIST)
    return entries


def test_every_block_is_read_by_the_report() -> None:
    """Each block is comments and "- "/"+ " lines only: another line, or a block with
    changed lines but no "# MODULE: why" head, would be skipped without a word."""
    blocks = [b for b in LIST.read_text(encoding="utf-8").split("\n\n") if b.strip()]
    judged = 0
    for block in blocks:
        lines = [line for line in block.strip().splitlines() if line.strip()]
        odd = [line for line in lines if not line.startswith(("#", "- ", "+ "))]
        assert not odd, f"lines the report does not read: {odd}"
        if any(line[:2] in ("- ", "+ ") for line in lines):
            assert lines[0].startswith("#") and ":" in lines[0], f"no '# MODULE: why' head: {lines}"
            judged += 1
    assert judged == len(_entries()) > 0


def test_every_removed_line_still_occurs_in_its_module() -> None:
    stale = []
    for module, key, why in _entries():
        path = ROOT / "src" / Path(*module.split(".")).with_suffix(".py")
        assert path.is_file(), f"{module} (named by {why!r}) has no source file {path}"
        # Compared as the report compares a mutant's lines: without surrounding spaces.
        source = {line.strip() for line in path.read_text(encoding="utf-8").splitlines()}
        stale += [
            f"{module}: {line[1:]!r} ({why})"
            for line in key
            if line.startswith("-") and line[1:] not in source
        ]
    assert not stale, "stale blocks in scripts/mutation-equivalent.txt:\n" + "\n".join(stale)
