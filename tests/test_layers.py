"""The import graph of localtrain is layered and has no cycle.

The graph is read from the source with `ast`, every import included: those at the top of a
module, those inside functions, and those under `if TYPE_CHECKING:` (a type named from an upper
layer is still a dependency on it). docs/architecture.md explains the layers.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where each package's source lives (pyproject.toml maps the subpackages to top-level folders).
PACKAGES = {
    "localtrain": ROOT / "localtrain",
    "localtrain.backends": ROOT / "backends",
    "localtrain.tui": ROOT / "tui",
    "localtrain.configs": ROOT / "configs",
}
# Lowest first. A module may import modules of its own layer or of a lower one. The first
# pattern that matches a module's name (without the "localtrain." prefix) places it.
LAYERS: list[tuple[str, list[str]]] = [
    ("base", ["__init__", "errors", "events", "files", "jsonl", "ownership", "config", "validate", "configs",
              "runfiles", "control", "flags", "schema", "plan", "data.paths", "data.corpora"]),
    ("backends", ["backends", "backends.*"]),
    ("machine", ["hardware", "metrics", "sharding", "parallel"]),
    ("data, planner, checkpoint", ["data", "data.*", "batch", "memory", "planner", "tuner", "checkpoint", "quality",
                                   "weights"]),
    ("loop", ["sampling", "schedule", "loopstate", "loopeval", "oom", "train", "evaltext", "evaluate", "sample",
              "export"]),
    ("runner", ["stages", "runner", "rundir", "console", "doctor"]),
    ("cli and tui", ["cli", "__main__", "tui", "tui.*"]),
]
FRAMEWORKS = {"torch", "mlx", "triton"}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in (package, *rel.parts) if p != "__init__"]
            if package == "localtrain" and rel.parts[0] in ("backends", "tui", "configs"):
                continue
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imported(name: str, path: Path) -> set[str]:
    """Every module name `name` imports, absolute, as written (external ones included)."""
    names: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            wanted = {f"{module}.{alias.name}" for alias in node.names}
            names.update(wanted)
            # `from package import module` depends on the module; a name from the package's
            # own body is a dependency on the package.
            if not wanted <= set(MODULES):
                names.add(module)
    return names


def _own(module: str) -> str | None:
    """The localtrain module `module` names (the longest known prefix), or None for an external one."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            return candidate
    return None


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    own: dict[str, set[str]] = {}
    external: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        names = _imported(name, path)
        resolved = {_own(n) for n in names}
        # A package's own submodules do not count as its imports of itself.
        own[name] = {r for r in resolved if r and r != name}
        external[name] = {n.split(".")[0] for n in names if not n.startswith("localtrain")}
    return own, external


GRAPH, EXTERNAL = _graph()


def _short(module: str) -> str:
    return module.removeprefix("localtrain.") if module != "localtrain" else "__init__"


def layer_of(module: str) -> int:
    short = _short(module)
    for rank, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(short, p) for p in patterns):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_layers.py"
                         " and to docs/architecture.md")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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
            visit(v)
    return found


def test_the_graph_is_read_from_every_module() -> None:
    # The reader must see the modules and the imports it claims to check.
    assert {"localtrain.runner", "localtrain.backends.torch_backend", "localtrain.tui.app"} <= set(MODULES)
    assert "torch" in EXTERNAL["localtrain.backends.torch_backend"]
    assert "localtrain.runner" in GRAPH["localtrain.cli"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle() -> None:
    found = cycles(GRAPH)
    assert not found, "\n".join(" <-> ".join(map(_short, c)) for c in found)


def test_every_import_goes_down_the_layers() -> None:
    upward = [f"{_short(a)} ({LAYERS[layer_of(a)][0]}) imports {_short(b)} ({LAYERS[layer_of(b)][0]})"
              for a in sorted(GRAPH) for b in sorted(GRAPH[a]) if layer_of(b) > layer_of(a)]
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_only_backends_import_the_frameworks(framework: str) -> None:
    assert [m for m in sorted(MODULES) if framework in EXTERNAL[m] and not m.startswith("localtrain.backends")] == []


def test_only_the_tui_imports_textual() -> None:
    textual = {"textual", "textual_plotext"}
    assert [m for m in sorted(MODULES) if textual & EXTERNAL[m] and not m.startswith("localtrain.tui")] == []


def test_nothing_below_the_cli_and_the_tui_imports_them() -> None:
    top = {m for m in MODULES if m in ("localtrain.cli", "localtrain.__main__") or m.startswith("localtrain.tui")}
    below = [f"{_short(a)} imports {_short(b)}" for a in sorted(set(MODULES) - top)
             for b in sorted(GRAPH[a] & top)]
    assert not below, "\n".join(below)


def test_backends_import_no_runner_cli_or_tui() -> None:
    banned = {"localtrain.runner", "localtrain.cli"} | {m for m in MODULES if m.startswith("localtrain.tui")}
    assert [f"{_short(a)} imports {_short(b)}" for a in sorted(MODULES) if a.startswith("localtrain.backends")
            for b in sorted(GRAPH[a] & banned)] == []
