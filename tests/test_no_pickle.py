"""Nothing pyinterp reads from files is unpickled: weights/activations are safetensors,
configs JSON. This scans the package source (AST, not grep, so comments and strings do not
count) for every way to unpickle or write pickles."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = [ROOT / "pyinterp", ROOT / "triton_kernels"]
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve",
                  "marshal"}
# torch.distributed's *_object collectives pickle over the wire: avoided too.
OBJECT_COLLECTIVES = {"all_gather_object", "broadcast_object_list", "scatter_object_list",
                      "gather_object", "send_object_list", "recv_object_list"}


def _sources():
    for pkg in PACKAGES:
        yield from sorted(pkg.rglob("*.py"))


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def _dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in PICKLE_MODULES:
                    out.append(f"{where}: import {a.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            out.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            last = name.rsplit(".", 1)[-1]
            if name in ("torch.load",) or name.endswith(".torch.load"):
                wo = _kw(node, "weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    out.append(f"{where}: torch.load without weights_only=True")
            elif name in ("torch.save",):
                out.append(f"{where}: torch.save writes a pickle (use safetensors)")
            elif last == "load" and name.split(".")[0] in ("np", "numpy"):
                ap = _kw(node, "allow_pickle")
                if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                    out.append(f"{where}: numpy.load with allow_pickle")
            elif last in OBJECT_COLLECTIVES:
                out.append(f"{where}: {name} pickles objects")
            elif name in ("pd.read_pickle", "pandas.read_pickle"):
                out.append(f"{where}: {name}")
    return out


def test_the_scanner_catches_what_it_must(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import pickle\nimport torch\nx = torch.load('f')\ny = torch.load('f', "
                   "weights_only=False)\nz = torch.load('f', weights_only=True)\n"
                   "torch.save({}, 'f')\nimport numpy as np\nnp.load('f', allow_pickle=True)\n"
                   "import torch.distributed as dist\ndist.all_gather_object([], 1)\n"
                   "# torch.load('in a comment')\ns = 'pickle.load in a string'\n")
    global ROOT
    old, ROOT = ROOT, tmp_path
    try:
        found = violations(bad)
    finally:
        ROOT = old
    assert len(found) == 6, found


@pytest.mark.parametrize("path", list(_sources()), ids=lambda p: str(p.relative_to(ROOT)))
def test_source_never_unpickles(path):
    assert violations(path) == []
