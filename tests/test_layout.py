"""The layout's rules, checked on the source: no import circle between the project's modules,
model_zoo imports neither service nor train, the clients import no server module, and no source
file outside tests/ is over 500 lines (a module that long does more than one job)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("service", "model_zoo", "train", "client", "bench")
MAX_LINES = 500


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def runtime_nodes(tree: ast.AST):
    """Every node, functions included, but not what sits under `if TYPE_CHECKING:` (never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            continue
        yield node
        yield from runtime_nodes(node)


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules `path` imports when it runs (functions too), resolved to known names."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in runtime_nodes(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(path, name, set(found)) for name, path in found.items()}


def test_no_import_circle() -> None:
    edges = graph()
    # A package's __init__ importing its own submodules is not a circle of meaning; leave those out.
    edges = {m: {t for t in targets if not t.startswith(m + ".")} for m, targets in edges.items()}
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                circles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_the_layers_point_one_way() -> None:
    edges = graph()
    def top(m: str) -> str:
        return m.split(".")[0]
    wrong = sorted(
        (m, t) for m, targets in edges.items() for t in targets
        if (top(m) == "model_zoo" and top(t) in ("service", "train", "client"))
        or (top(m) == "client" and top(t) in ("service", "model_zoo", "train"))
        or (top(m) == "service" and top(t) == "train")
    )
    assert wrong == []


def test_no_source_file_is_over_500_lines() -> None:
    long = {str(p.relative_to(REPO)): n for p in modules().values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}
