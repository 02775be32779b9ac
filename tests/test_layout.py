"""The import rules the layout stands on, read from the source (every import, at module level or in
a function, but not a module's ``if __name__ == "__main__":`` block, which runs only as a program).

A rule names modules by prefix, so that it holds for a concern's package and every module in it: the
sweep (bench/sweep/) and the report (bench/report/).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bench", "impls")
FRAMEWORKS = (
    "torch",
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "onnx",
    "onnxscript",
    "onnxruntime",
    "openvino",
    "tensorrt",
    "torch_tensorrt",
)
SWEEP = ("bench.sweep",)
REPORT = ("bench.report",)
PLUGIN = ("bench.plugin", "bench.options", "bench.matrix", "bench.session")
RUNNERS = ("bench.runners",)


def _is(module: str, prefixes: Iterable[str]) -> bool:
    """Whether ``module`` is one of ``prefixes`` or inside one of them (a package's module)."""
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


@cache
def project_modules() -> dict[str, Path]:
    """Every module of bench/ and impls/ by its dotted name (a package by its own)."""
    found = {}
    for package in PACKAGES:
        for file in (ROOT / package).rglob("*.py"):
            parts = file.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = file
    return found


def _main_block(node: ast.AST) -> bool:
    """``if __name__ == "__main__":``"""
    test = getattr(node, "test", None)
    return (
        isinstance(node, ast.If)
        and isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators)
    )


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """The dotted names ``module`` imports: ``from a import b`` gives a.b where that is a module,
    else a; relative imports resolved."""
    names: set[str] = set()
    nodes = [tree]
    while nodes:
        node = nodes.pop()
        if _main_block(node):
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                names.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in project_modules() else base)
        nodes.extend(ast.iter_child_nodes(node))
    return names


@cache
def imports(module: str) -> frozenset[str]:
    """What ``module`` imports itself: project modules by their names, other packages by their
    top-level name (torch for torch.nn.functional)."""
    file = project_modules()[module]
    names = _imported_names(ast.parse(file.read_text(), str(file)), module, file.name == "__init__.py")
    found = set()
    for name in names:
        parts = name.split(".")
        owner = next(
            (
                ".".join(parts[:n])
                for n in range(len(parts), 0, -1)
                if ".".join(parts[:n]) in project_modules()
            ),
            None,
        )
        found.add(owner if owner is not None else parts[0])
    found.discard(module)
    return frozenset(found)


@cache
def reached(module: str) -> frozenset[str]:
    """Everything importing ``module`` imports, directly or through project modules."""
    seen, todo = set(), [module]
    while todo:
        for name in imports(todo.pop()):
            if name not in seen:
                seen.add(name)
                if name in project_modules():
                    todo.append(name)
    return frozenset(seen)


def _circles() -> list[list[str]]:
    """The project's import circles: each strongly connected set of modules (Tarjan's algorithm)."""
    graph = {m: sorted(n for n in imports(m) if n in project_modules()) for m in project_modules()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def _modules(prefixes: Iterable[str]) -> list[str]:
    return sorted(m for m in project_modules() if _is(m, prefixes))


def test_the_rules_see_the_modules_they_name() -> None:
    """A rule over no module would pass for nothing."""
    for prefixes in (SWEEP, REPORT, PLUGIN, RUNNERS):
        assert _modules(prefixes), prefixes
    assert "torch" in imports("bench.runners.torch_runner")
    assert "bench.run_config" in imports("bench.runners.torch_runner")
    assert "bench.environment" in imports("bench.sweep.process_worker")  # its allocator


def test_no_import_circles() -> None:
    assert _circles() == []


@pytest.mark.parametrize("module", _modules(REPORT))
def test_the_report_imports_no_runner_no_sweep_and_no_framework(module: str) -> None:
    """The report reads run folders: it runs on a machine with neither framework installed."""
    forbidden = sorted(
        name for name in reached(module) if _is(name, RUNNERS) or _is(name, SWEEP) or _is(name, FRAMEWORKS)
    )
    assert forbidden == [], f"{module} imports {forbidden}"


@pytest.mark.parametrize("module", _modules(RUNNERS))
def test_the_runners_never_import_the_sweep_the_report_or_the_plugin(module: str) -> None:
    forbidden = sorted(name for name in reached(module) if _is(name, SWEEP + REPORT + PLUGIN))
    assert forbidden == [], f"{module} imports {forbidden}"


def test_the_environment_imports_no_framework_and_no_runner() -> None:
    """What only torch can say is asked of a process of its own (bench/torch_probe.py)."""
    forbidden = sorted(
        name for name in reached("bench.environment") if _is(name, RUNNERS) or _is(name, FRAMEWORKS)
    )
    assert forbidden == [], forbidden
    assert "torch" in imports("bench.torch_probe")


def test_the_sweeps_process_imports_no_framework() -> None:
    """Every framework runs in worker processes, each with its own settings and caches."""
    modules = (
        "bench.plugin, bench.options, bench.matrix, bench.session, bench.sweep, "
        "bench.report, bench.environment, bench.runners"
    )
    code = f"import sys, {modules}; print(sorted({{'torch', 'jax'}} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


MODULE_LINES = 450  # issue 22's budget: a module a newcomer reads in one sitting


def test_no_module_of_bench_is_over_its_line_budget() -> None:
    long = {
        str(path.relative_to(ROOT)): count
        for path in sorted((ROOT / "bench").rglob("*.py"))
        if (count := len(path.read_text().splitlines())) > MODULE_LINES
    }
    assert not long, f"over {MODULE_LINES} lines, split by concern: {long}"
