"""Who may import whom (../shared/DESIGN.md, "Who may import whom"), checked on the source of every module.

- a driver imports only the contract modules of ``gateway``;
- the simulators import neither ``gateway`` nor ``drivers`` (a decoding bug must not cancel out);
- ``gateway`` never imports a particular driver: the drivers' own commands register through the
  ``iiot_gateway.commands`` entry points, the bench's hot-path workload through ``iiot_gateway.bench``;
- no import circle among the modules' top-level imports (imports inside functions and under
  ``TYPE_CHECKING`` are not module dependencies).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = {"gateway.driver", "gateway.batch", "gateway.config.common", "gateway.scaling", "gateway.driver_commands"}


def modules() -> dict[str, Path]:
    out = {}
    for package in ("gateway", "drivers", "simulators"):
        for path in (ROOT / package).rglob("*.py"):
            if path.name.endswith("_pb2.py"):
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, *, top_level_only: bool) -> set[str]:
    """Modules ``path`` imports (absolute names); with ``top_level_only`` only those run at import time."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and top_level_only:
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.add(child.module)
                found.update(f"{child.module}.{a.name}" for a in child.names)
            visit(child, top)

    visit(tree, True)
    return found


def owner(name: str, known: dict[str, Path]) -> str | None:
    """The project module ``name`` refers to (``gateway.x.y`` may be a name inside module ``gateway.x``)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def test_drivers_import_only_the_contract_of_the_gateway():
    known = modules()
    bad = []
    for mod, path in known.items():
        if not mod.startswith("drivers"):
            continue
        for name in imports(path, top_level_only=False):
            target = owner(name, known)
            if target and target.startswith("gateway") and target not in CONTRACT:
                bad.append(f"{mod} imports {target}")
    assert bad == []


def test_simulators_import_neither_gateway_nor_drivers():
    known = modules()
    bad = [
        f"{mod} imports {name}"
        for mod, path in known.items()
        if mod.startswith("simulators")
        for name in imports(path, top_level_only=False)
        if name.split(".")[0] in ("gateway", "drivers")
    ]
    assert bad == []


def test_gateway_never_imports_a_driver():
    """Not even lazily: the CLI's driver commands and the bench's driver workloads come by entry point."""
    known = modules()
    bad = [
        f"{mod} imports {name}"
        for mod, path in known.items()
        if mod.startswith("gateway")
        for name in imports(path, top_level_only=False)
        if name.split(".")[0] == "drivers"
    ]
    assert bad == []


def test_no_import_circles():
    known = modules()
    graph = {
        mod: {t for n in imports(path, top_level_only=True) if (t := owner(n, known)) and t != mod}
        for mod, path in known.items()
    }
    # a package's __init__ importing its own submodules is not a circle of its own
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if m.startswith(t + "."):  # a module importing its own package (__init__) is not a circle
                continue
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t) :] + [t])
            elif t not in state:
                walk(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m)
    assert cycles == []
