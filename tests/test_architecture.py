"""The house rules of src/sam4em, checked on its source: no import cycles, layers import only downwards,
short functions and files.

Imports are read from the syntax tree, including imports inside functions (a lazy import still ties two
modules together), so the rules hold for what the code can import, not only for what it imports at load.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sam4em"
MAX_FUNCTION_LINES = 80
MAX_FILE_LINES = 450

#: Rank of each top-level part of the package: a module may import only parts of lower or equal rank
#: (equal: within its own layer). Shared utilities sit at the bottom; the CLI and the GUI at the top.
LAYERS: dict[str, int] = {
    "errors": 0,
    "atomic": 0,
    "claim": 0,
    "devices": 0,
    "fingerprint": 0,
    "io": 1,
    "data": 2,
    "datasets": 2,
    "models": 3,
    "training": 4,
    "inference": 4,
    "evaluation": 5,
    "workflows": 6,
    "cli": 7,
    "__main__": 7,
    "napari_plugin": 7,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> Iterator[str]:
    """Every dotted name an import statement may refer to (a module, or a module's attribute)."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = ".".join(package[: len(package) - node.level + 1])
        base = f"{anchor}.{base}" if base else anchor
    yield base
    yield from (f"{base}.{alias.name}" for alias in node.names)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in its source)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        targets = {
            target
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for target in _imported(node, name, path.name == "__init__.py")
        }
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_covers_the_package() -> None:
    graph = import_graph()
    assert len(graph) > 100 and {"sam4em.cli", "sam4em.io.formats"} <= set(graph)
    assert "sam4em.io.formats" in graph["sam4em.io.api"]


def test_no_import_cycles() -> None:
    cycles = import_cycles(import_graph())
    assert not cycles, "import cycles (lazy imports included): " + "; ".join(" <-> ".join(c) for c in cycles)


def test_every_part_of_the_package_has_a_layer() -> None:
    parts = {_layer(m) for m in _modules()} - {"__init__"}
    assert not parts - set(LAYERS), f"add these to LAYERS: {sorted(parts - set(LAYERS))}"


def test_layers_import_only_downwards() -> None:
    upward = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        if _layer(module) in LAYERS
        for target in sorted(targets)
        if _layer(target) in LAYERS and LAYERS[_layer(target)] > LAYERS[_layer(module)]
    ]
    assert not upward, "imports from a higher layer: " + "; ".join(upward)


def _long_functions(path: Path) -> Iterator[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                yield f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({length} lines)"


def test_no_long_functions() -> None:
    long = [entry for path in _modules().values() for entry in _long_functions(path)]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: " + "; ".join(long)


def test_no_long_files() -> None:
    long = [
        f"{path.relative_to(PACKAGE)} ({n} lines)"
        for path in _modules().values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES
    ]
    assert not long, f"files over {MAX_FILE_LINES} lines: " + "; ".join(long)
