"""Kill rates per module from a finished mutmut run (called by scripts/mutation.sh).

Run in the folder mutmut ran in. A mutant counts as *equivalent* (no test could
notice it, because no behaviour changes) when either

- it differs from the original only in the ``reason`` argument of a call: the text
  of ``Decision.reason``, which nothing shows, stores or logs; or
- its changed lines match an entry of ``scripts/mutation-equivalent.txt``, each
  judged by hand and explained there.

The rate per module is killed / (mutants - equivalent). Every other mutant that
was not killed is listed with its diff.
"""

from __future__ import annotations

import ast
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

KILLED = {1, 3, 24, -24, 36, 37, 152, 255, -11, -9}
"""mutmut exit codes of a mutant the tests noticed: failed, errored, timed out,
rejected by the type checker, or crashed the test process."""


@dataclass
class Module:
    name: str
    killed: int = 0
    equivalent: Counter[str] = field(default_factory=Counter)
    open: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.killed + sum(self.equivalent.values()) + len(self.open)

    @property
    def rate(self) -> float:
        judged = self.total - sum(self.equivalent.values())
        return 100.0 * self.killed / judged if judged else 100.0


def load_equivalents(path: Path) -> list[tuple[str, Counter[str], str]]:
    """Entries of the hand-judged list: (module, changed lines, why)."""
    entries: list[tuple[str, Counter[str], str]] = []
    if not path.is_file():
        return entries
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        lines = [line for line in block.strip().splitlines() if line.strip()]
        head = [line for line in lines if line.startswith("#")]
        changed = [line for line in lines if line[:2] in ("- ", "+ ")]
        if not head or not changed:
            continue
        module, _, why = head[0].lstrip("# ").partition(":")
        key = Counter(line[0] + line[2:].strip() for line in changed)
        entries.append((module.strip(), key, why.strip()))
    return entries


def changed_lines(diff: str) -> Counter[str]:
    return Counter(
        line[0] + line[1:].strip()
        for line in diff.splitlines()
        if line[:1] in "-+" and not line.startswith(("---", "+++"))
    )


class _DropReason(ast.NodeTransformer):
    def visit_Call(self, node: ast.Call) -> ast.AST:
        node.keywords = [k for k in node.keywords if k.arg != "reason"]
        self.generic_visit(node)
        return node


def only_reason_differs(original: str, mutant: str) -> bool:
    def normal(code: str) -> str:
        return ast.dump(_DropReason().visit(ast.parse(code)))

    try:
        return normal(original) == normal(mutant)
    except SyntaxError:
        return False


def main(argv: list[str]) -> int:
    import libcst as cst
    from mutmut.mutation.diff_apply import get_diff_for_mutant, read_functions_from_index

    equivalents = load_equivalents(Path(argv[0]))
    modules: dict[str, Module] = {}
    for path in argv[1:]:
        meta = Path("mutants") / f"{path}.meta"
        if not meta.is_file():
            continue
        codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
        for name, code in codes.items():
            module = modules.setdefault(name.rsplit(".", 1)[0], Module(name.rsplit(".", 1)[0]))
            if code in KILLED:
                module.killed += 1
                continue
            diff = get_diff_for_mutant(name, path=path)
            functions = read_functions_from_index(name, path)
            if functions is not None and only_reason_differs(
                *(cst.Module([f]).code for f in functions)
            ):
                module.equivalent["reason text"] += 1
                continue
            lines = changed_lines(diff)
            why = next((w for m, key, w in equivalents if m == module.name and key == lines), None)
            if why is not None:
                module.equivalent[why] += 1
                continue
            status = {0: "survived", 5: "no tests", 33: "no tests", 34: "skipped"}.get(
                code if code is not None else -1, f"exit code {code}"
            )
            module.open.append((name, status, diff))

    print(f"\n{'module':36} {'mutants':>7} {'killed':>6} {'equiv':>5} {'open':>4} {'rate':>7}")
    for m in sorted(modules.values(), key=lambda m: m.name):
        equivalent = sum(m.equivalent.values())
        print(
            f"{m.name:36} {m.total:7d} {m.killed:6d} {equivalent:5d} {len(m.open):4d}"
            f" {m.rate:6.1f}%"
        )
    total = sum(m.total for m in modules.values())
    killed = sum(m.killed for m in modules.values())
    equivalent = sum(sum(m.equivalent.values()) for m in modules.values())
    rate = 100.0 * killed / (total - equivalent) if total > equivalent else 100.0
    print(f"{'all':36} {total:7d} {killed:6d} {equivalent:5d} {total - killed - equivalent:4d}"
          f" {rate:6.1f}%")  # fmt: skip
    print("\nrate = killed / (mutants - equivalent); equivalent mutants by reason:")
    reasons: Counter[str] = Counter()
    for m in modules.values():
        reasons.update(m.equivalent)
    for why, count in reasons.most_common():
        print(f"  {count:4d}  {why}")
    for m in sorted(modules.values(), key=lambda m: m.name):
        for name, status, diff in m.open:
            body = "\n".join(f"    {line}" for line in diff.splitlines()[2:])
            print(f"\n{name} ({status})\n{body}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
