"""Ahead-of-time compile of the SoLU Triton kernels for sm_90 (no GPU needed).

The interpreter misses what only the GPU compiler checks (types of loop-carried values,
layouts, fp64 math); compiling both the single-block and the multi-block variants catches it.
Runs in a subprocess because TRITON_INTERPRET=1 (set by conftest) replaces @triton.jit.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = r"""
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import pyinterp.backends.triton.kernels
from pyinterp.backends.triton.solu import block_config
from pyinterp.triton_kernels import solu as tk

target = GPUTarget("cuda", 90, 32)


def jobs(dt, acc, block, single):
    ACC = tl.float64 if acc == "fp64" else tl.float32
    p, a = "*" + dt, "*" + acc
    base = dict(BLOCK=block, SINGLE=single, ACC=ACC)
    return [
        (tk._solu_fwd_kernel, dict(X=p, Y=p, LSE=a, n_cols="i32"), base),
        (tk._solu_bwd_kernel, dict(X=p, LSE=a, GY=p, GX=p, n_cols="i32"), base),
        (tk._solu_ln_fwd_kernel, dict(X=p, W=a, B=a, Y=p, PRE=p, STATS=a, n_cols="i32",
                                      eps="fp32"),
         dict(base, HAS_W=True, HAS_B=True, STORE_PRE=True)),
        (tk._solu_ln_bwd_kernel, dict(X=p, W=a, STATS=a, GY=p, GPRE=p, GX=p, PW=a, PB=a,
                                      n_rows="i32", n_cols="i32"),
         dict(base, HAS_W=True, HAS_GPRE=True)),
    ]


todo = []
for n_cols in (2048, 300000):  # one block per row / the multi-block loop
    block, single, warps = block_config(n_cols)
    todo += [(j, warps) for j in jobs("fp32", "fp32", block, single)]
todo += [(j, 4) for j in jobs("bf16", "fp32", 256, True)]
todo += [(j, 4) for j in jobs("fp16", "fp32", 256, False)]
todo += [(j, 4) for j in jobs("fp64", "fp64", 256, True)]
for (fn, sig, const), warps in todo:
    sig = dict(sig, **{c: "constexpr" for c in const})
    k = triton.compile(ASTSource(fn, sig, const), target=target, options={"num_warps": warps})
    assert ".target sm_90" in k.asm["ptx"], fn
print("compiled", len(todo))
"""


def test_solu_triton_kernels_compile_for_sm90():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                         env=env, cwd=ROOT, timeout=900)
    assert out.returncode == 0 and "compiled" in out.stdout, out.stderr[-4000:]
