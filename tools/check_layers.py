"""Hold the package's floors: no import loop, and no import from a floor
above.

The floors, lowest first (``DESIGN``: core <- tunnel/state <- upgrades,
socks, client <- cli). A module may import its own floor and the ones
below; the floor of a module is the first package under ``hijack`` that
names it (``hijack.upgrades.websocket._handshake`` -> ``upgrades``), or
``core`` for the top-level modules. Every import counts, lazy ones inside
functions and type-only ones under ``if TYPE_CHECKING:`` too: a loop that
only the type checker sees still means two modules that cannot be read
apart.

Run: ``python tools/check_layers.py [PACKAGE_DIR]``; exit 1 with one line a
problem, 0 and nothing printed when the house holds.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

FLOORS: dict[str, int] = {
    "core": 0,
    "tunnel": 1,
    "state": 1,
    "upgrades": 2,
    "socks": 2,
    "client": 2,
    # The test kit drives the server and the shipped WebSocket.
    "testing": 2,
    "cli": 3,
    # ``python -m hijack`` is the command.
    "__main__": 3,
}


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(
    name: str, is_package: bool, tree: ast.AST, known: set[str]
) -> Iterator[str]:
    """Every module of the package that ``tree`` imports (``from . import
    x`` names module ``x`` when there is one)."""
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                if f"{target}.{alias.name}" in known:
                    yield f"{target}.{alias.name}"
                elif target in known:
                    yield target


def floor_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) < 2:
        return "core"
    top = parts[1]
    return top if top in FLOORS else "core"


def problems(root: Path) -> list[str]:
    files = {module_name(root, p): p for p in sorted(root.rglob("*.py"))}
    known = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        found = set(imported_modules(name, is_package, tree, known))
        # A package's __init__ is run by importing any of its modules: an
        # import of the package itself is what it is, not a loop with it.
        graph[name] = {m for m in found if m != name}
    found_problems = []
    for name, targets in sorted(graph.items()):
        for target in sorted(targets):
            if FLOORS[floor_of(target)] > FLOORS[floor_of(name)]:
                found_problems.append(
                    f"{name} imports {target}: {floor_of(name)} is below "
                    f"{floor_of(target)}"
                )
    for loop in loops(graph):
        found_problems.append("import loop: " + " -> ".join([*loop, loop[0]]))
    return found_problems


def loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan),
    each as a list of module names; package __init__ re-exports are edges
    down, so they only loop when a module imports its package back."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else Path(__file__).parent.parent / "hijack")
    found = problems(root.resolve())
    for line in found:
        print(line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
