"""The package layout: imports flow one way (no circle between modules, even inside functions),
``lib`` never imports ``jobs`` or the DAGs, and ``jobs/`` files stay thin entry points."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "lib"
PKG = LIB / "listing_dedup"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(LIB).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Project modules ``path`` imports anywhere (top level or inside a function)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            while n and n not in modules:
                n = n.rpartition(".")[0]
            if n and n != "listing_dedup":
                out.add(n)
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    modules = set(files)
    graph = {}
    for name, path in files.items():
        deps = _imports(path, modules) - {name}
        # a package's __init__ re-exporting its own modules is not a dependency the other way
        graph[name] = {d for d in deps if not (path.name == "__init__.py" and d.startswith(name + "."))}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if d.startswith(n + "."):  # importing a package imports its __init__ only
                continue
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state and (c := visit(d)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_import_circle():
    graph = _graph()
    assert "listing_dedup.embed.encoder" in graph and "listing_dedup.sink.delta" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_cycle_finder_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycle(graph) == ["a", "b", "c", "a"]


def test_lib_never_imports_jobs_or_dags():
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module]
            bad = [m for m in mods if m.split(".")[0] in ("jobs", "airflow_dags")]
            assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_stages_import_downstream_only():
    """Data flows ingest -> embed -> search -> graph -> sink; no stage package imports a later one
    (quality and training read everything; config, errors and the small shared modules are below all)."""
    order = ["ingest", "embed", "search", "graph", "sink"]
    for name, deps in _graph().items():
        parts = name.split(".")
        if len(parts) < 3 or parts[1] not in order:
            continue
        for d in deps:
            dp = d.split(".")
            if len(dp) >= 2 and dp[1] in order:
                assert order.index(dp[1]) <= order.index(parts[1]), f"{name} imports the later stage {d}"


def test_jobs_are_thin_entry_points():
    for path in (REPO / "jobs").glob("*.py"):
        code = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith(("#",))]
        assert len(code) < 20, f"{path.name} holds code: put it in listing_dedup.cli"
        assert "from listing_dedup.cli." in path.read_text()


def test_evaluate_command_does_not_import_spark():
    """Scoring a committed run reads Delta through delta-rs: no JVM, no pyspark import."""
    import subprocess
    import sys

    code = (
        "import sys, listing_dedup.cli.evaluate, listing_dedup.dates; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyspark'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
