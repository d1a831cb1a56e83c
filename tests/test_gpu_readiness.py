"""CPU proofs of issue 15's defects that need neither a compiler nor the CUDA launch recorder:
the Triton kernels under the interpreter at the sizes where the GPU would have failed.
(tests/test_gpu_defects.py runs the same paths on a card.)
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_PLANES = r"""
import torch
import pyinterp.backends.triton.kernels  # noqa: F401  (registers pyinterp.triton_kernels)
from pyinterp import ops
from pyinterp.triton_kernels import attention as ta

PLANE = 2**30  # B * H * Tq of a big call; the third rule's plane starts at 2^31 elements
T, D = 4, 16
g = torch.Generator().manual_seed(0)
q, k = torch.randn(1, 1, T, D, generator=g), torch.randn(1, 1, T, D, generator=g)
kinds = torch.tensor([0, 1, 0], dtype=torch.int32)
ns = torch.tensor([1, 0, 0], dtype=torch.int64)
lse, ent = torch.empty(1, 1, T), torch.empty(1, 1, T)
mass = torch.empty(2 * PLANE + T)  # 8 GiB of address space, three pages touched
ta._stats_kernel[(1, 1)](q, k, kinds, kinds, kinds, ns, lse, ent, mass, 1, 1, T, T, D, 0,
                         D ** -0.5, PLANE, R=3, CAUSAL=True, HAS_PAD=False, HAS_DUP=False,
                         HAS_IND=False, CAST_F32=False, ACC_F64=False, BLOCK_M=16, BLOCK_N=16,
                         BLOCK_D=16)
ref = ops.attention_stats(q, k, rules=("prev", "first", "offset:0"), backend="reference")
for r, name in enumerate(("prev", "first", "offset:0")):
    torch.testing.assert_close(mass[r * PLANE:r * PLANE + T], ref[name].reshape(-1))
print("ok")
"""


def test_attention_mass_planes_addressed_past_int32():
    """The rule planes of attention_stats' mass output lie PLANE = B*H*Tq elements apart; the
    kernel formed r * PLANE in 32 bits, which wraps once it passes 2^31 (the store then lands
    2^31 elements before the buffer: a crash, or corrupt memory on the GPU). The interpreter
    keeps Triton's 32-bit integer semantics, so a kernel call with PLANE = 2^30 and three rules
    shows it; the buffer is 8 GiB of address space of which three pages are touched.
    Runs in a child process: the unfixed kernel segfaults."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", _PLANES], capture_output=True, text=True,
                         env=env, cwd=str(ROOT), timeout=600)
    if "MemoryError" in out.stderr or "DefaultCPUAllocator: can't allocate" in out.stderr:
        pytest.skip("this machine refuses 8 GiB of (untouched) address space")
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), (
        f"exit {out.returncode}\n{out.stderr[-3000:]}")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_triton_topk_encode_empty_batch(dtype):
    """N = 0 through the fused Triton top-k: empty codes (the split count divided by the zero
    row blocks: ZeroDivisionError), forward and backward."""
    import torch

    from kernel_testing import require
    from pyinterp import ops

    device = require("triton")
    dt = getattr(torch, dtype)
    x = torch.zeros(0, 8, dtype=dt, device=device, requires_grad=True)
    W = torch.randn(8, 300, dtype=dt, device=device, requires_grad=True)
    b = torch.zeros(300, dtype=dt, device=device, requires_grad=True)
    v, i = ops.topk_encode(x, W, b, None, 5, backend="triton")
    assert v.shape == i.shape == (0, 5) and v.dtype == dt
    gx, gW, gb = torch.autograd.grad(v.float().sum(), [x, W, b])
    assert gx.shape == x.shape and not gW.any() and not gb.any()


def _backend_values(decorator, module_lists) -> set:
    """The backend names a ``pytest.mark.parametrize("backend", ...)`` decorator gives."""
    import ast

    if not (isinstance(decorator, ast.Call) and getattr(decorator.func, "attr", "") == "parametrize"
            and decorator.args and isinstance(decorator.args[0], ast.Constant)
            and decorator.args[0].value == "backend" and len(decorator.args) > 1):
        return set()
    values = decorator.args[1]
    if isinstance(values, ast.Name):
        if values.id == "BACKEND_PARAMS":  # kernel_testing: every registered backend
            return {"triton", "cuda"}
        values = module_lists.get(values.id)
    if isinstance(values, (ast.List, ast.Tuple)):
        return {e.value for e in values.elts if isinstance(e, ast.Constant)}
    return {"?"}


def test_gpu_backend_tests_use_the_device_require_returns():
    """A test parametrized over a GPU backend must put its tensors on the device that
    ``require(backend)`` returns: CUDA on a GPU machine, where ``backend="triton"`` refuses CPU
    tensors. tests/test_properties.py discarded it and built CPU tensors (issue 15, defect 9),
    which only the interpreter accepts. Checked statically over every test file: such a test
    may not call ``require(backend)`` and drop the result."""
    import ast

    bad = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        lists = {t.id: node.value for node in tree.body if isinstance(node, ast.Assign)
                 for t in node.targets if isinstance(t, ast.Name)}
        for fn in tree.body:
            if not isinstance(fn, ast.FunctionDef) or not fn.name.startswith("test"):
                continue
            names = set().union(*[_backend_values(d, lists) for d in fn.decorator_list])
            if not names & {"triton", "cuda", "?"}:
                continue
            for node in ast.walk(fn):
                if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
                        and getattr(node.value.func, "id", "") == "require"):
                    bad.append(f"{path.name}::{fn.name} line {node.lineno}")
    assert not bad, "require(backend)'s device discarded in: " + ", ".join(bad)
