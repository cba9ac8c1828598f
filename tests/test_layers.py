"""The import graph: no module imports one from a layer above it, and nothing imports
itself back through others. Read from the source (every import, function-level ones
included), so a lazy import cannot hide a dependency that runs back up."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top. A module not named here belongs to the first layer: the services every
# path uses (config, journal, dispatch, keys, ...), and the provider adapters.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("services", ()),
    ("runtime", ("receiver.runtime",)),
    (
        "core paths",
        (
            "receiver.changes",
            "receiver.core",
            "receiver.sweep",
            "receiver.probe",
            "receiver.digicert_placement",
        ),
    ),
    ("doors", ("receiver.doors",)),
    ("hosts", ("receiver.hosts", "receiver.entrypoints", "receiver.cli", "receiver.__main__")),
    ("tools", ("receiver.docsgen",)),
]


def layer_of(module: str) -> int:
    for index, (_, prefixes) in reversed(list(enumerate(LAYERS))):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return 0


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in ("receiver", "providers"):
        for path in (ROOT / package).rglob("*.py"):
            found[module_name(path)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports (for `from a import b`, `a.b` when it is a
    module, else `a`)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) for name, path in found.items()}


def test_no_module_imports_one_from_a_layer_above_it() -> None:
    upward = [
        f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for name, targets in sorted(graph().items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(name)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(edges.get(name, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(" -> ".join(cycle) for cycle in cycles)


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("receiver.core", "receiver.doors"),  # the core knows no door by name
        ("receiver.runtime", "receiver.doors"),
        ("providers", "receiver"),  # adapters never import the receiver
    ],
)
def test_named_boundaries(module: str, forbidden: str) -> None:
    crossing = [
        f"{name} imports {target}"
        for name, targets in graph().items()
        if name == module or name.startswith(module + ".")
        for target in targets
        if target == forbidden or target.startswith(forbidden + ".")
    ]
    assert not crossing, crossing
