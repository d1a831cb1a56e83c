"""The kernel architecture's layering rules (docs/architecture.md), read from the source:
imports only run downward, the oracle stays independent, no import cycle, and every built-in
backend's launcher modules provide what every public op's Function calls."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, int]]:
    """Every module a file imports (function-level imports included), fully qualified."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.append((base, node.lineno))
            out += [(f"{base}.{a.name}", node.lineno) for a in node.names]
    return out


PACKAGE = sorted((ROOT / "pyinterp").rglob("*.py"))
MODULES = {_module_name(p): p for p in PACKAGE}


def _violations(files, forbidden, allowed=()):
    bad = []
    for path in files:
        for target, line in _imports(path):
            if any(target == f or target.startswith(f + ".") for f in forbidden) and not any(
                    target == a or target.startswith(a + ".") for a in allowed):
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    return bad


def test_triton_kernels_import_nothing_from_pyinterp():
    files = sorted((ROOT / "triton_kernels").glob("*.py"))
    assert files
    assert _violations(files, ["pyinterp"]) == []


def test_backends_never_import_ops():
    files = sorted((ROOT / "pyinterp" / "backends").rglob("*.py"))
    assert _violations(files, ["pyinterp.ops"]) == []


def test_reference_imports_no_other_pyinterp_module():
    files = sorted((ROOT / "pyinterp" / "reference").rglob("*.py"))
    assert _violations(files, ["pyinterp"], allowed=["pyinterp.reference"]) == []


def test_no_production_module_imports_the_oracle():
    files = [p for p in PACKAGE if not _module_name(p).startswith("pyinterp.reference")]
    assert _violations(files, ["pyinterp.reference"]) == []


def _resolve(target: str):
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def test_no_import_cycle_in_the_package():
    graph = {}
    for name, path in MODULES.items():
        deps = {_resolve(t) for t, _ in _imports(path)}
        # a module importing its own ancestor package is how Python imports it: not an edge
        graph[name] = {d for d in deps if d and d != name and not name.startswith(d + ".")}
    done, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in done:
            return
        stack.append(node)
        for dep in sorted(graph[node]):
            visit(dep)
        stack.pop()
        done.add(node)

    for node in sorted(graph):
        visit(node)
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
def test_builtin_backends_supply_every_public_op(backend):
    """Support is discovered from the launcher modules; every built-in kernel backend has
    every op (the cuda launcher modules import without cupy or a GPU)."""
    if backend == "triton":
        pytest.importorskip("triton")
    import pyinterp.ops  # noqa: F401  (defines the ops)
    from pyinterp.ops._dispatch import OPS

    assert len(OPS) >= 8
    missing = [name for name, op in OPS.items() if not op(backend)]
    assert missing == []
