"""Multi-output sparse decode (ops.multi_decode) on every backend against an independent dense
oracle (dense code scattered into (N, S * d_src), one matmul per (source block, output)),
forward and backward, each dtype, awkward sizes (G = 1, k = 1, k = d_sae, empty ranges,
N = 0, a latent in several outputs), deterministic mode, non-finite input, bad input."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernel_testing import BACKEND_PARAMS, assert_close, require
from pyinterp import ops
from pyinterp.ops.multi_decode import clt_decoder_map, prefix_ranges, shared_decoder_map

BACKENDS = BACKEND_PARAMS
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def dyadic(*shape, scale=4, lo=-4, hi=5, gen=None):
    return torch.randint(lo, hi, shape, generator=gen).double() / scale


def dense_oracle(values, indices, W, b, dmap, ranges):
    """out[g] = sum_s (D[:, block s] * in_range_g) @ W[dmap[s][g]] + b[g] in float64."""
    P, d_src, d_out = W.shape
    S, G = len(dmap), len(dmap[0])
    n = values.shape[0]
    D = torch.zeros(n, S * d_src, dtype=torch.float64).scatter_add(
        1, indices, values.double())
    lat = torch.arange(S * d_src)
    outs = []
    for g in range(G):
        lo, hi = ranges[g] if ranges is not None else (0, S * d_src)
        keep = ((lat >= lo) & (lat < hi)).double()
        out = torch.zeros(n, d_out, dtype=torch.float64)
        for s in range(S):
            p = dmap[s][g]
            if p >= 0:
                blk = slice(s * d_src, (s + 1) * d_src)
                out = out + (D[:, blk] * keep[blk]) @ W[p].double()
        if b is not None:
            out = out + b[g].double()
        outs.append(out)
    return torch.stack(outs)


def unique_indices(n, k, total, gen):
    """Each row k distinct latents (as encoders produce)."""
    return torch.stack([torch.randperm(total, generator=gen)[:k] for _ in range(n)])


# (N, k, P, d_src, d_out, decoder_map, ranges)
CASES = {
    "G1": (5, 3, 1, 11, 7, None, None),
    "k1": (6, 1, 2, 9, 5, None, [(0, 9), (3, 4)]),
    "k_eq_dsae": (4, 10, 3, 10, 6, None, None),
    "empty_range": (5, 4, 2, 12, 8, None, [(0, 0), (5, 5)]),
    "matryoshka": (7, 6, 1, 20, 9, shared_decoder_map(3), prefix_ranges([4, 11, 20])),
    "clt3": (6, 5, 6, 7, 10, clt_decoder_map(3), None),
    "clt_ranges": (4, 6, 3, 5, 6, clt_decoder_map(2), [(0, 3), (2, 10)]),
    "N0": (0, 3, 2, 9, 5, None, None),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("deterministic", [False, True], ids=["default", "deterministic"])
def test_multi_decode_matches_dense(backend, dtype, case, deterministic):
    device = require(backend)
    n, k, P, d_src, d_out, dmap, ranges = CASES[case]
    g = torch.Generator().manual_seed(hash(case) % 1000)
    dmap_t = dmap if dmap is not None else [list(range(P))]
    S, G = len(dmap_t), len(dmap_t[0])
    values = dyadic(n, k, gen=g)
    indices = unique_indices(n, k, S * d_src, g) if n else torch.zeros(0, k, dtype=torch.long)
    W = dyadic(P, d_src, d_out, scale=8, gen=g)
    b = dyadic(G, d_out, gen=g)
    v, Wt, bt = (t.to(device=device, dtype=dtype).requires_grad_() for t in (values, W, b))
    out = ops.multi_decode(v, indices.to(device), Wt, bt, decoder_map=dmap, ranges=ranges,
                           deterministic=deterministic, backend=backend)
    assert out.shape == (G, n, d_out) and out.dtype == dtype
    vr, Wr, br = (t.to(dtype).double().requires_grad_() for t in (values, W, b))
    ref = dense_oracle(vr, indices, Wr, br, dmap_t, ranges)
    assert_close(out, ref.to(dtype), dtype=dtype)
    weight = torch.linspace(-1, 2, out.numel()).reshape(out.shape).double()
    grads = torch.autograd.grad((out.double() * weight.to(device)).sum(), [v, Wt, bt])
    rgrads = torch.autograd.grad((ref * weight).sum(), [vr, Wr, br])
    for a, r in zip(grads, rgrads):
        assert_close(a, r.to(dtype), dtype=dtype, grad=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_leading_dims_int32_and_no_bias(backend):
    device = require(backend)
    g = torch.Generator().manual_seed(1)
    values = dyadic(2, 3, 4, gen=g).float()
    indices = unique_indices(6, 4, 16, g).reshape(2, 3, 4)
    W = dyadic(2, 16, 5, gen=g).float()
    out = ops.multi_decode(values.to(device), indices.int().to(device), W.to(device),
                           backend=backend)
    assert out.shape == (2, 2, 3, 5)
    ref = dense_oracle(values.reshape(6, 4), indices.reshape(6, 4), W, None, [[0, 1]], None)
    assert_close(out.reshape(2, 6, 5), ref.float())


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicate_latents_deterministic_bits(backend):
    """Many rows hitting few latents: grad W_dec bit-identical across runs in deterministic
    mode, equal to the oracle."""
    device = require(backend)
    g = torch.Generator().manual_seed(3)
    n, k, d_src = 40, 3, 4
    values = torch.randn(n, k, generator=g).to(device).requires_grad_()
    indices = unique_indices(n, k, 2 * d_src, g).to(device)
    W = torch.randn(3, d_src, 6, generator=g).to(device).requires_grad_()
    grads = []
    for _ in range(2):
        out = ops.multi_decode(values, indices, W, decoder_map=clt_decoder_map(2),
                               deterministic=True, backend=backend)
        grads.append(torch.autograd.grad(out.square().sum(), W)[0])
    assert torch.equal(grads[0], grads[1])
    Wr = W.detach().cpu().double().requires_grad_()
    ref = dense_oracle(values.detach().cpu().double(), indices.cpu(), Wr, None,
                       clt_decoder_map(2), None)
    assert_close(grads[0], torch.autograd.grad(ref.square().sum(), Wr)[0].float(), grad=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_like_the_reference(backend):
    """NaN / inf values and an inf decoder row propagate exactly as the reference's (an
    in-range entry always adds values * W; an out-of-range entry adds nothing)."""
    device = require(backend)
    values = torch.tensor([[1.0, float("nan")], [float("inf"), 0.0], [2.0, 1.0]])
    indices = torch.tensor([[0, 5], [1, 2], [3, 4]])
    W = torch.ones(2, 6, 3)
    W[0, 4] = float("inf")
    ranges = [(0, 6), (0, 4)]   # output 1 never sees latents 4, 5
    out = ops.multi_decode(values.to(device), indices.to(device), W.to(device), ranges=ranges,
                           backend=backend)
    ref = ops.multi_decode(values, indices, W, ranges=ranges, backend="reference")
    torch.testing.assert_close(out.cpu(), ref, equal_nan=True)
    assert torch.isnan(ref[0, 0]).all() and torch.isfinite(ref[1, 0]).all()
    assert torch.isinf(ref[0, 2]).all() and torch.equal(ref[1, 2], torch.full((3,), 2.0))


@pytest.mark.parametrize("backend", ["reference"])
def test_gradcheck_float64(backend):
    g = torch.Generator().manual_seed(5)
    values = torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_()
    indices = unique_indices(4, 3, 9, g)
    W = torch.randn(6, 3, 2, generator=g, dtype=torch.float64).requires_grad_()
    b = torch.randn(3, 2, generator=g, dtype=torch.float64).requires_grad_()
    f = lambda v, w, bb: ops.multi_decode(v, indices, w, bb, decoder_map=clt_decoder_map(3),  # noqa: E731
                                          ranges=[(0, 9), (1, 8), (0, 5)], backend=backend)
    assert torch.autograd.gradcheck(f, (values, W, b))


def test_helpers():
    assert clt_decoder_map(3) == [[0, 1, 2], [-1, 3, 4], [-1, -1, 5]]
    assert shared_decoder_map(2) == [[0, 0]]
    assert prefix_ranges([2, 5]) == [(0, 2), (0, 5)]


BAD = [
    (dict(W=torch.ones(2, 4)), ValueError, "W_dec must be 3-D"),
    (dict(decoder_map=[[0, 2]]), ValueError, r"decoder_map\[0\]\[1\] = 2"),
    (dict(decoder_map=[[0], [0]]), ValueError, "used by source blocks 0 and 1"),
    (dict(decoder_map=[[0, 1], [1]]), ValueError, "rows of equal length"),
    (dict(ranges=[(0, 4)]), ValueError, "one \\(lo, hi\\) per output"),
    (dict(ranges=[(0, 4), (2, 9)]), ValueError, r"ranges\[1\]"),
    (dict(b=torch.ones(3, 5)), ValueError, "b_dec must have shape"),
    (dict(indices=torch.tensor([[0, 8]])), ValueError, "indices must lie in"),
    (dict(indices=torch.tensor([[0.0, 1.0]])), TypeError, "indices must have dtype"),
    (dict(values=torch.ones(1, 2, dtype=torch.float64)), TypeError, "one dtype"),
    (dict(deterministic=1), TypeError, "deterministic must be a bool"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_input_names_the_argument(case):
    over, exc, match = BAD[case]
    args = dict(values=torch.ones(1, 2), indices=torch.tensor([[0, 3]]), W=torch.ones(2, 4, 5),
                b=None, decoder_map=None, ranges=None, deterministic=False)
    args.update(over)
    with pytest.raises(exc, match=match):
        ops.multi_decode(args["values"], args["indices"], args["W"], args["b"],
                         decoder_map=args["decoder_map"], ranges=args["ranges"],
                         deterministic=args["deterministic"])


# ------------------------------------------------------------------------------------------
# GPU code that cannot run here: compiled, and its launchers checked against the kernels

ROOT = Path(__file__).resolve().parents[1]
MD_CU = ROOT / "csrc" / "cuda" / "multi_decode.cu"
MD_KERNELS = [f"md_{op}_{s}" for op in ("gather", "gather_dot") for s in ("f32", "f16", "bf16", "f64")
              ] + [f"md_scatter_{m}_{s}" for m in ("atomic", "segment") for s in ("f32", "f64")]


def _nvrtc_ptx(src: Path) -> str:
    nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc",
                                reason="cupy is not installed (the nvcc test covers the source)")
    try:
        nvrtc.getVersion()
    except Exception as exc:  # pragma: no cover - depends on the install
        pytest.skip(f"NVRTC library unavailable ({exc}); the nvcc test covers the source")
    prog = nvrtc.createProgram(src.read_text(), src.name, [], [])
    try:
        nvrtc.compileProgram(prog, ["-std=c++17", "--use_fast_math", "-arch=sm_90",
                                    f"-I{src.parent}"])
    except Exception:
        pytest.fail(nvrtc.getProgramLog(prog))
    ptx = nvrtc.getPTX(prog)
    return ptx.decode() if isinstance(ptx, bytes) else ptx


def test_cuda_kernels_compile_and_match_their_launchers(monkeypatch):
    """Every kernel the CUDA launchers call exists (NVRTC, sm_90) and takes as many arguments
    as the launcher passes: the launchers run here on CPU tensors with a recording runtime."""
    import re

    from pyinterp.backends.cuda import multi_decode as launch_md
    from pyinterp.backends.cuda import runtime

    ptx = _nvrtc_ptx(MD_CU)
    params = {}
    for m in re.finditer(r"\.entry (\w+)\(([^)]*)\)", ptx):
        params[m.group(1)] = m.group(2).count(".param")
    assert set(MD_KERNELS) <= set(params), sorted(set(MD_KERNELS) - set(params))
    calls = []
    monkeypatch.setattr(runtime, "kernel", lambda f, name, dtype=None: (
        f"{name}_{runtime.DTYPE_SUFFIX[dtype]}" if dtype is not None else name))
    monkeypatch.setattr(runtime, "launch", lambda fn, grid, block, args, shared_mem=0:
                        calls.append((fn, len(args))))
    g = torch.Generator().manual_seed(0)
    idx = unique_indices(3, 2, 8, g)
    coef = torch.randn(3, 2)
    W = torch.randn(3, 4, 5)
    from pyinterp.ops.multi_decode import _plan
    dmap, lo, hi = _plan(tuple(map(tuple, clt_decoder_map(2))), None, 3, 4, "cpu")
    launch_md.multi_gather(coef, idx, W, torch.zeros(2, 5), dmap, lo, hi)
    for det in (False, True):
        launch_md.multi_backward(coef, idx, torch.randn(2, 3, 5), W, dmap, lo, hi, True, True,
                                 det)
    assert {c[0] for c in calls} == {"md_gather_f32", "md_gather_dot_f32", "md_scatter_atomic_f32",
                                     "md_scatter_segment_f32"}
    for name, n_args in calls:
        assert params[name] == n_args, (name, params[name], n_args)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed here")
def test_cuda_source_compiles_with_nvcc(tmp_path):
    out = subprocess.run(["nvcc", "-c", "-arch=sm_90", "-std=c++17", f"-I{MD_CU.parent}",
                          str(MD_CU), "-o", str(tmp_path / "md.o")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


_AOT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from pyinterp.backends.triton.kernels import package  # noqa: F401
from pyinterp.triton_kernels import multi_decode as tk

target = GPUTarget("cuda", 90, 32)


def compile_(fn, sig, const):
    src = ASTSource(fn, {**sig, **{c: "constexpr" for c in const}}, const)
    assert ".target sm_90" in triton.compile(src, target=target).asm["ptx"], fn


plan = {"DMAP": "*i64", "LO": "*i64", "HI": "*i64", "N": "i32", "K": "i32", "D": "i32",
        "G": "i32", "d_src": "i32", "n_src": "i32"}
compile_(tk._md_gather_kernel, {"COEF": "*fp32", "IDX": "*i64", "W": "*bf16", "BIAS": "*bf16",
                                "OUT": "*bf16", **plan},
         dict(HAS_BIAS=True, ACC_F64=False, BLOCK_J=16, BLOCK_D=256))
compile_(tk._md_gather_dot_kernel, {"GOUT": "*fp32", "IDX": "*i64", "W": "*bf16", "OUT": "*fp32",
                                    **plan}, dict(ACC_F64=False, BLOCK_J=16, BLOCK_D=256))
compile_(tk._md_scatter_atomic_kernel, {"COEF": "*fp32", "IDX": "*i64", "X": "*fp32",
                                        "OUT": "*fp32", **plan}, dict(BLOCK_D=256))
compile_(tk._md_scatter_segment_kernel, {"COEF": "*fp32", "ORDER": "*i64", "OFFSETS": "*i64",
                                         "X": "*fp32", "OUT": "*fp32", **plan}, dict(BLOCK_D=256))
print("ok")
"""


def test_triton_kernels_compile_for_sm90():
    """Ahead-of-time compile for sm_90 (catches what the interpreter misses), in a child
    process without the interpreter."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="0")
    out = subprocess.run([sys.executable, "-c", _AOT], capture_output=True, text=True, env=env,
                         cwd=str(ROOT), timeout=900)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-4000:]
