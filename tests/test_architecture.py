"""The house rules of docs/architecture.md: no import cycle, imports point down the layers, deferred imports say why."""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("superfilter", "train", "eval")
# The pipeline and the entry points: the only modules of superfilter/ that may know the stages.
TOP = {"superfilter.pipeline", "superfilter.planning", "superfilter.config", "superfilter.cli_pipeline", "superfilter",
       "superfilter.__main__", "superfilter.api", "superfilter.cli"}
# Entry points that defer the API (torch, seconds) so that `import superfilter` and `superfilter --help` stay instant.
LAZY_ENTRY_POINTS = {"superfilter", "superfilter.cli"}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the project module imported
    line: int
    local: bool  # inside a function


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def type_checking_nodes(tree: ast.Module) -> set[int]:
    """Imports under `if TYPE_CHECKING:` run only for type checkers."""
    found: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            found |= {id(n) for n in ast.walk(node)}
    return found


def imported_names(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
    return [f"{base}.{a.name}" for a in node.names]


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module a dotted name lives in: `pkg.mod.func` → `pkg.mod`; `pkg.name` → `pkg` unless it is a module."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def project_imports() -> list[Import]:
    modules = project_modules()
    found: list[Import] = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        top = {id(n) for n in tree.body}
        typing_only = type_checking_nodes(tree)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in typing_only:
                continue
            targets = {resolve(n, modules) for n in imported_names(node, module, path.name == "__init__.py")}
            for target in sorted(t for t in targets if t and t != module):
                found.append(Import(module, target, node.lineno, id(node) not in top))
    return found


def cycles(edges: list[Import]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> str:
    package = module.split(".")[0]
    if package == "superfilter":
        return "top" if module in TOP else "library"
    return package


def test_no_import_cycle():
    assert cycles(project_imports()) == []


def test_the_cycle_finder_finds_a_cycle():
    edges = [Import("a", "b", 1, False), Import("b", "c", 1, False), Import("c", "a", 1, False),
             Import("c", "d", 1, False)]
    assert cycles(edges) == [["a", "b", "c"]]


def test_imports_point_down_the_layers():
    allowed = {"library": {"library"}, "train": {"library", "train"}, "eval": {"library", "eval"},
               "top": {"library", "train", "eval", "top"}}
    wrong = [f"{e.source}:{e.line} imports {e.target}" for e in project_imports()
             if layer(e.target) not in allowed[layer(e.source)]]
    assert wrong == []


def test_project_modules_are_imported_at_module_top():
    local = [f"{e.source}:{e.line} imports {e.target} inside a function" for e in project_imports()
             if e.local and e.source not in LAZY_ENTRY_POINTS]
    assert local == []


def test_every_deferred_import_says_why():
    """A function-local import defers a heavy optional dependency; a `# deferred:` comment on its line or on the line
    above its block says so."""
    missing = []
    for path in project_modules().values():
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        top = {id(n) for n in tree.body} | type_checking_nodes(tree)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                if "# deferred:" in lines[node.lineno - 1]:
                    continue
                above = node.lineno - 2
                while above >= 0 and lines[above].strip().startswith(("import ", "from ")):
                    above -= 1
                if above < 0 or not lines[above].strip().startswith("# deferred:"):
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert missing == []


@pytest.mark.slow
def test_scoring_through_the_api_loads_no_stage(tmp_path):
    """`import superfilter; superfilter.score(...)` loads neither train/ nor eval/."""
    script = (
        "import sys, superfilter\n"
        "rows = [{'instruction': 'Say hi.', 'input': '', 'output': 'Hi there, nice to meet you.'},\n"
        "        {'instruction': 'Count to three.', 'input': '', 'output': 'One, two, three.'}]\n"
        f"scored = superfilter.score(rows, model='tiny', artifact_root={str(tmp_path)!r})\n"
        "assert len(scored) == 2 and 'ifd' in scored[0], scored\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('train', 'eval')))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip().splitlines()[-1] == "[]"
