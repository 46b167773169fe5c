"""The package's layering, read from the source with `ast` (nothing is imported):

- no import cycle between mvimpute modules (imports inside functions count; `if TYPE_CHECKING:`
  blocks do not run and do not count; a package's `__init__` importing its own submodules is a
  re-export, not an edge);
- the engine (mvimpute/engine/) reaches neither MLflow, the job configs, the tracking and registry
  modules, the plots, the jobs layer nor the public imputer API, through any chain of mvimpute
  imports;
- no module imports the top-level `serve` package or changes `sys.path`.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "mvimpute"
ENGINE = "mvimpute.engine"

# What the engine must not reach (DESIGN.md, "Engine below, jobs above").
ENGINE_FORBIDDEN_MODULES = (
    "mvimpute.tracking",
    "mvimpute.registry",
    "mvimpute.plots",
    "mvimpute.jobs",
    "mvimpute.imputer",
)
ENGINE_FORBIDDEN_EXTERNAL = ("mlflow",)
ENGINE_FORBIDDEN_NAMES = {"mvimpute.config": ("TrainJobConfig", "TuneJobConfig", "load_job_config")}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    line: int
    module: str  # the module named (absolute), e.g. "mvimpute.config", "mlflow.pyfunc"
    names: tuple[str, ...]  # what `from module import ...` takes; () for `import module`
    lazy: bool  # inside a function

    @property
    def where(self) -> str:
        return f"{rel(MODULES[self.source])}:{self.line}"

    def targets(self) -> list[str]:
        """The mvimpute modules this import loads: `from .x import y` with y a submodule is x.y."""
        if not self.module.startswith(PACKAGE):
            return []
        if not self.names:
            return [self.module] if self.module in MODULES else []
        out = {f"{self.module}.{n}" for n in self.names if f"{self.module}.{n}" in MODULES}
        if any(f"{self.module}.{n}" not in MODULES for n in self.names) and self.module in MODULES:
            out.add(self.module)
        return sorted(out)


def _is_type_checking(test: ast.expr) -> bool:
    return ast.unparse(test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    def __init__(self, source: str):
        self.source = source
        self.package = source if is_package(source) else source.rpartition(".")[0]
        self.depth = 0
        self.found: list[Import] = []

    def _function(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If):
        if _is_type_checking(node.test):
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import):
        for alias in node.names:
            self.found.append(Import(self.source, node.lineno, alias.name, (), self.depth > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom):
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module
        names = tuple(alias.name for alias in node.names)
        self.found.append(Import(self.source, node.lineno, module, names, self.depth > 0))


def imports_of(name: str) -> list[Import]:
    visitor = _Imports(name)
    visitor.visit(ast.parse(MODULES[name].read_text(), filename=str(MODULES[name])))
    return visitor.found


IMPORTS: dict[str, list[Import]] = {name: imports_of(name) for name in MODULES}


def import_graph(reexports: bool) -> dict[str, dict[str, Import]]:
    """module -> {imported mvimpute module: the first import statement that loads it}. Without
    `reexports`, a package `__init__`'s imports of its own submodules are left out."""
    graph: dict[str, dict[str, Import]] = {name: {} for name in MODULES}
    for name, imports in IMPORTS.items():
        for imp in imports:
            for target in imp.targets():
                if target == name or (not reexports and is_package(name) and target.startswith(name + ".")):
                    continue
                graph[name].setdefault(target, imp)
    return graph


def strongly_connected(graph: dict[str, dict]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def shortest_path(graph: dict[str, dict], start: str, goal, within: set[str] | None = None) -> list[str] | None:
    """The shortest import chain from `start` (excluded from the goal test) to a module `goal`
    accepts, as a list of modules."""
    parent: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in sorted(graph[v]):
            if within is not None and w not in within:
                continue
            if goal(w) and (w != start or v != start):
                path = [w, v]
                while parent[path[-1]] is not None:
                    path.append(parent[path[-1]])
                return path[::-1]
            if w not in parent:
                parent[w] = v
                queue.append(w)
    return None


def describe(graph: dict[str, dict[str, Import]], chain: list[str]) -> str:
    steps = [
        f"{a} -> {b} ({graph[a][b].where}{', in a function' if graph[a][b].lazy else ''})"
        for a, b in zip(chain, chain[1:], strict=False)
    ]
    return "\n    ".join(steps)


# ----------------------------------------------------------------------------- no cycles


def test_the_package_is_read():
    assert {"mvimpute", "mvimpute.config", "mvimpute.models.base", ENGINE} <= set(MODULES)
    graph = import_graph(reexports=False)
    assert "mvimpute.models.base" in graph["mvimpute.models.tae"], "relative imports resolve"


def test_no_import_cycles():
    graph = import_graph(reexports=False)
    cycles = []
    for component in strongly_connected(graph):
        members = set(component)
        chain = shortest_path(graph, component[0], lambda m, c=component[0]: m == c, within=members)
        cycles.append(f"{', '.join(component)}:\n    {describe(graph, chain)}")
    assert not cycles, f"{len(cycles)} import cycle(s) between mvimpute modules:\n" + "\n".join(cycles)


def test_the_cycle_check_finds_a_cycle():
    graph = {"a": {"b": None}, "b": {"c": None}, "c": {"a": None}, "d": {"a": None}}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert shortest_path(graph, "a", lambda m: m == "a") == ["a", "b", "c", "a"]


# ----------------------------------------------------------------------------- the engine stays below


def _reached(graph: dict[str, dict[str, Import]], start: str) -> dict[str, list[str]]:
    """Every module `start` loads (directly, in functions, or through other modules, the packages
    around each included), with the chain that loads it."""
    chains = {start: [start]}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        nxt = list(graph[v])
        parts = v.split(".")
        nxt += [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in MODULES]
        for w in nxt:
            if w not in chains:
                chains[w] = chains[v] + [w]
                queue.append(w)
    return chains


def _chain_text(graph, chain: list[str]) -> str:
    steps = []
    for a, b in zip(chain, chain[1:], strict=False):
        imp = graph[a].get(b)
        steps.append(f"{a} -> {b} ({imp.where if imp else 'its package'})")
    return " ; ".join(steps) or chain[0]


def engine_violations() -> list[str]:
    graph = import_graph(reexports=True)
    engine = [m for m in MODULES if m == ENGINE or m.startswith(ENGINE + ".")]
    found = []
    for start in engine:
        for module, chain in _reached(graph, start).items():
            via = _chain_text(graph, chain)
            if any(module == f or module.startswith(f + ".") for f in ENGINE_FORBIDDEN_MODULES):
                found.append(f"{start} loads {module}: {via}")
            for imp in IMPORTS[module]:
                top = imp.module.split(".")[0]
                if top in ENGINE_FORBIDDEN_EXTERNAL:
                    found.append(f"{start} loads {imp.module} ({imp.where}): {via}")
                taken = set(imp.names) & set(ENGINE_FORBIDDEN_NAMES.get(imp.module, ()))
                if taken:
                    found.append(f"{start} loads {imp.module}.{'/'.join(sorted(taken))} ({imp.where}): {via}")
    return sorted(set(found))


def test_engine_reaches_no_mlflow_job_config_tracking_or_public_api():
    assert ENGINE in MODULES, "mvimpute/engine/ is missing"
    bad = engine_violations()
    assert not bad, "the engine reaches what sits above it:\n  " + "\n  ".join(bad)


def test_the_engine_check_catches_what_it_should(tmp_path, monkeypatch):
    probe = tmp_path / "_probe.py"
    probe.write_text(
        "from ..config import TrainJobConfig\ndef run():\n    import mlflow\n    from mvimpute import tracking\n"
    )
    monkeypatch.setitem(MODULES, "mvimpute.engine._probe", probe)
    monkeypatch.setitem(IMPORTS, "mvimpute.engine._probe", imports_of("mvimpute.engine._probe"))
    bad = "\n".join(v for v in engine_violations() if v.startswith("mvimpute.engine._probe "))
    assert "mvimpute.config.TrainJobConfig" in bad
    assert "loads mlflow" in bad
    assert "loads mvimpute.tracking" in bad


# ----------------------------------------------------------------------------- no path tricks

SYS_PATH_CALLS = {"insert", "append", "extend", "remove", "pop", "clear", "__setitem__"}


def path_and_serve_violations(name: str) -> list[str]:
    where = rel(MODULES[name])
    tree = ast.parse(MODULES[name].read_text())
    found = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            found += [f"{where}:{line} imports {a.name}" for a in node.names if a.name.split(".")[0] == "serve"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "serve":
                found.append(f"{where}:{line} imports from {node.module}")
            if node.module == "sys" and any(a.name == "path" for a in node.names):
                found.append(f"{where}:{line} imports sys.path")
        elif isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            if isinstance(node.func, ast.Attribute) and ast.unparse(node.func.value) == "sys.path":
                if node.func.attr in SYS_PATH_CALLS:
                    found.append(f"{where}:{line} changes sys.path ({func})")
            if func in ("site.addsitedir", "addsitedir"):
                found.append(f"{where}:{line} changes sys.path ({func})")
            if func in ("importlib.import_module", "import_module", "__import__") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and str(arg.value).split(".")[0] == "serve":
                    found.append(f"{where}:{line} imports {arg.value}")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                text = ast.unparse(target)
                if text == "sys.path" or text.startswith("sys.path["):
                    found.append(f"{where}:{line} changes sys.path ({text} = ...)")
    return found


def test_no_module_imports_serve_or_changes_sys_path():
    bad = [v for name in MODULES for v in path_and_serve_violations(name)]
    assert not bad, "the package must import only itself and its dependencies:\n  " + "\n  ".join(bad)


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("import sys\nsys.path.insert(0, 'x')\n", True),
        ("import sys\nsys.path[:0] = ['x']\n", True),
        ("def f():\n    from serve.app import build_app\n", True),
        ("import serve\n", True),
        ("from ray import serve\n", False),
        ("import sys\nprint(sys.path)\n", False),
    ],
)
def test_the_path_check_catches_what_it_should(source, caught, tmp_path, monkeypatch):
    monkeypatch.setitem(MODULES, "mvimpute._probe", tmp_path / "_probe.py")
    (tmp_path / "_probe.py").write_text(source)
    assert bool(path_and_serve_violations("mvimpute._probe")) is caught, source
