"""Import hygiene of the library: core/ never imports the terminal UI's packages (textual,
rich), its modules import each other without a cycle, and its packages (core.prune,
core.models, core.session, ...) depend on each other one way only."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import core

CORE = Path(core.__file__).parent
UI_PACKAGES = ("textual", "rich")


def module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(CORE.rglob("*.py"))}


def imported(path: Path, at_import_time: bool) -> set[str]:
    """The modules `path` imports: every import statement, or (`at_import_time`) those that
    run when it is imported (outside function bodies)."""
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if at_import_time and (isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                                   or isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join([*package.split(".")[:len(package.split(".")) - child.level + 1], base]).strip(".")
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def edges(at_import_time: bool = True) -> dict[str, set[str]]:
    """core module -> the core modules importing it runs: each one it names and the packages
    above them (their __init__ runs first), except the packages above itself (already running)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        running = {name.rsplit(".", n)[0] for n in range(name.count(".") + 1)}
        targets = set()
        for target in imported(path, at_import_time):
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            named = target
            while target:
                if target == named or target not in running:
                    targets.add(target)
                target = target.rpartition(".")[0]
        graph[name] = targets - {name, "core"}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def area(module: str) -> str:
    """The part of core a module belongs to: its subpackage (core.prune) or itself (core.session)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_core_module_imports_textual_or_rich_anywhere():
    offenders = sorted(f"{name} imports {target}" for name, path in MODULES.items()
                       for target in imported(path, at_import_time=False)
                       if target.split(".")[0] in UI_PACKAGES)
    assert not offenders, offenders


def test_importing_every_core_module_loads_no_textual():
    """(rich may come in through third-party packages: httpx, which huggingface_hub imports,
    loads it; core's own imports are checked above.)"""
    script = ("import importlib, json, sys\n"
              f"for name in {sorted(MODULES)!r}:\n"
              "    importlib.import_module(name)\n"
              "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'workbench'))))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_the_import_graph_sees_imports_and_cycles():
    """The helpers this file's checks rest on: a known import is found, a planted cycle is."""
    assert "core.finetune.events" in edges()["core.finetune.rundir"]
    assert "core.errors" in edges()["core.session"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_core_modules_import_each_other_without_a_cycle():
    assert cycles(edges()) == []


def test_core_packages_depend_on_each_other_one_way():
    """No upward import: collapsed to their parts of core (core.prune, core.session, ...),
    the modules' imports form no cycle (e.g. core.session composes core.prune.settings, so
    nothing in core.prune may import core.session when it is imported)."""
    graph: dict[str, set[str]] = {}
    for name, targets in edges().items():
        graph.setdefault(area(name), set()).update(area(t) for t in targets if area(t) != area(name))
    assert cycles(graph) == []


def test_a_replay_loads_no_optional_library_it_does_not_use():
    """What a replay, the app's loader and the pruning code import leaves out timm, torchvision
    and transformers (seconds each; torch-pruning would pull timm in), and scipy's optimiser
    until ranks are estimated; torch-pruning's import leaves no trace of hiding timm, so timm
    imports as usual afterwards for the models that need it."""
    script = ("import json, sys\n"
              "import core.chain, core.overview, core.pipeline, core.prune.surgery, core.prune.peer\n"
              "from core.models.torch_pruning_lib import tp\n"
              "loaded = sorted(m for m in ('timm', 'torchvision', 'transformers', 'scipy.optimize') if m in sys.modules)\n"
              "print(json.dumps([loaded, tp.__name__, hasattr(tp, 'DependencyGraph')]))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == [[], "torch_pruning", True]
