"""GPU probes, one per defect of issue 15 (what an H100/H200 would have hit), each against an
independent float64 computation. They need a CUDA device and are skipped without one; on CPU
the same defects are covered by:

1, 4, 3 (TF32), 8 (grid)  tests/test_gpu_resources.py (sm_90 compile of every launch config)
2, 6, 8 (grid)            tests/test_cuda_launch_contract.py (every CUDA launch vs its kernel)
5                         tests/test_cuda_topk_race.py (the epilogue on host threads)
7, 8 (int32), 9           the interpreter tests named in each probe's docstring.

tools/gpu_check.sh runs this file first on the card.
"""
from __future__ import annotations

import pytest
import torch

from kernel_testing import require
from pyinterp import ops

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="GPU probe: needs a CUDA device (tools/gpu_check.sh runs it)")]


def _exact_topk(pre: torch.Tensor, k: int):
    """Top-k by the tie rule (value desc, then index asc), ReLU'd values, from float64 pre."""
    order = torch.sort(pre, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.gather(pre, 1, order).clamp_min(0), order


def _encoder_inputs(n, d_in, d_sae, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(n, d_in, device="cuda", generator=g).to(dtype)
    W = (torch.randn(d_in, d_sae, device="cuda", generator=g) / d_in ** 0.5).to(dtype)
    b = (0.1 * torch.randn(d_sae, device="cuda", generator=g)).to(dtype)
    return x, W, b


def _check_topk(backend, dtype, n, d_in, d_sae, k):
    x, W, b = _encoder_inputs(n, d_in, d_sae, dtype)
    v, i = ops.topk_encode(x, W, b, None, k, backend=backend)
    pre = x.double() @ W.double() + b.double()
    want, _ = _exact_topk(pre, k)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(v.double(), want, **tol)
    got = torch.gather(pre, 1, i).clamp_min(0)  # the chosen columns hold the values reported
    torch.testing.assert_close(got, want, **tol)
    assert (torch.sort(i, 1).values.diff(dim=1) > 0).all(), "repeated index in a row"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_1_triton_topk_k1_with_column_splits(dtype):
    """k = 1 with many column splits: the merge kernel's k = 1 path (tl.topk of 1-D keys with
    k = 1 failed to compile under triton 3.6)."""
    require("triton")
    _check_topk("triton", dtype, 8, 64, 50_000, 1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["topk", "threshold", "batchtopk"])
def test_2_cuda_encoder_gradients_16bit(dtype, kind):
    """bf16/fp16 encoder gradients: grad x through the float32 gather (the 16-bit kernel wrote
    into the float32 buffer)."""
    require("cuda")
    x, W, b = _encoder_inputs(64, 96, 700, dtype)
    bd = torch.zeros(96, device="cuda", dtype=dtype)
    grads = {}
    for backend in ("cuda", "reference"):
        leaves = [t.detach().clone().requires_grad_() for t in (x, W, b, bd)]
        fn = {"topk": lambda *a: ops.topk_encode(*a, 16, backend=backend),
              "threshold": lambda *a: ops.threshold_encode(*a, 0.5, backend=backend),
              "batchtopk": lambda *a: ops.batchtopk_encode(*a, 16, backend=backend)}[kind]
        v, i = fn(*leaves)
        g = torch.randn(v.shape, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
        grads[backend] = torch.autograd.grad((v.float() * g).sum(), leaves)
    for got, want, name in zip(grads["cuda"], grads["reference"], ("x", "W_enc", "b_enc", "b_dec")):
        torch.testing.assert_close(got.double(), want.double(), atol=5e-2, rtol=5e-2, msg=name)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("P", [9, 12, 16])
def test_3_persona_tokens_float32_accuracy(backend, P):
    """reduce="none" with P >= 9: float32 accuracy (triton 3.6 turned the multiply-sum into a
    TF32 dot: ~1e-3 relative error)."""
    device = require(backend)
    g = torch.Generator(device=device).manual_seed(0)
    layers = [torch.randn(4, 300, 4096, device=device, generator=g) for _ in range(2)]
    vec = torch.randn(P, 4096, device=device, generator=g)
    got = ops.persona_project(layers, vec, reduce="none", backend=backend)
    u = vec.double() / vec.double().norm(dim=-1, keepdim=True)
    want = torch.stack([h.double() @ u.T for h in layers])
    err = ((got.double() - want).norm() / want.norm()).item()
    assert err < 1e-5, f"relative error {err:.2e} (TF32 would give ~1e-3)"


@pytest.mark.parametrize("k", [129, 200, 256])
def test_4_triton_topk_float32_large_k(k):
    """float32 top-k for 129 <= k <= 256 (needed 262,144 B of shared memory: OutOfResources)."""
    require("triton")
    _check_topk("triton", torch.float32, 300, 128, 20_000, k)


def test_5_cuda_topk_stress():
    """The CUDA top-k epilogue race: many rows, k across the racy residues, several column
    chunks, repeated (tests/test_cuda_topk_race.py has the host-thread check)."""
    require("cuda")
    for k in (33, 100, 255, 256, 300, 1000, 1024):
        for seed in range(3):
            x, W, b = _encoder_inputs(512, 64, 20_000, torch.float32, seed)
            v, i = ops.topk_encode(x, W, b, None, k, backend="cuda")
            pre = x.double() @ W.double() + b.double()
            want, _ = _exact_topk(pre, k)
            torch.testing.assert_close(v.double(), want, atol=1e-4, rtol=1e-4, msg=f"k={k} seed={seed}")
            assert (torch.sort(i, 1).values.diff(dim=1) > 0).all(), f"k={k}: repeated index"


@pytest.mark.parametrize("dtype,d", [(torch.float32, 12224), (torch.float32, 12288),
                                     (torch.bfloat16, 12288), (torch.float16, 12289),
                                     (torch.float32, 20000), (torch.float32, 57000),
                                     (torch.float64, 6144), (torch.float64, 20000)])
def test_6_cuda_solu_rows_beyond_48k_of_shared_memory(dtype, d):
    """Rows whose float32 (float64) copy needs >= 48 KiB of dynamic shared memory (asked for
    without the opt-in: CUDA_ERROR_INVALID_VALUE)."""
    require("cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(64, d, device="cuda", generator=g).to(dtype).requires_grad_()
    w = torch.rand(d, device="cuda", generator=g).to(dtype).requires_grad_()
    b = torch.rand(d, device="cuda", generator=g).to(dtype).requires_grad_()
    gy = torch.randn(64, d, device="cuda", generator=g).to(dtype)
    y = ops.solu_ln(x, w, b, backend="cuda")
    got = torch.autograd.grad(y, [x, w, b], gy)
    xr, wr, br = (t.detach().double().requires_grad_() for t in (x, w, b))
    yr = torch.nn.functional.layer_norm(xr * xr.softmax(-1), (d,), wr, br)
    want = torch.autograd.grad(yr, [xr, wr, br], gy.double())
    tol = dict(atol=1e-4, rtol=1e-3) if dtype in (torch.float32, torch.float64) else dict(atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(y.double(), yr.detach(), **tol)
    for a, e, name in zip(got, want, "xwb"):
        torch.testing.assert_close(a.double(), e, **tol, msg=name)


def test_7_triton_topk_empty_batch():
    """N = 0 (was ZeroDivisionError in the split count); tests/test_sae_ops.py has the
    interpreter version."""
    require("triton")
    x, W, b = _encoder_inputs(0, 64, 1000, torch.bfloat16)
    v, i = ops.topk_encode(x, W, b, None, 8, backend="triton")
    assert v.shape == i.shape == (0, 8)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_8_attention_more_heads_than_grid_y(backend):
    """B * H = 65,600 > 65,535 (grid y's limit)."""
    device = require(backend)
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(16400, 4, 5, 32, device=device, generator=g)
    k = torch.randn(16400, 2, 5, 32, device=device, generator=g)
    got = ops.attention_stats(q, k, rules=("prev", "first"), backend=backend)
    want = ops.attention_stats(q.double(), k.double(), rules=("prev", "first"), backend="reference")
    torch.testing.assert_close(got.lse.double(), want.lse, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got["prev"].double(), want["prev"], atol=1e-4, rtol=1e-4)


def test_8_attention_mass_offsets_past_int32():
    """R * B * H * T >= 2^31: the rule planes of the mass output are addressed in 64 bits
    (r * PLANE overflowed int32 for the third rule). 2^20 query heads sharing one key head,
    T = 1024, bf16: 32 GiB of q and 20 GiB of outputs."""
    require("triton")
    free, _ = torch.cuda.mem_get_info()
    if free < 60 * 2**30:
        pytest.skip(f"needs 60 GiB of free GPU memory, {free / 2**30:.0f} GiB free")
    H, T, D = 2**20, 1024, 16
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.empty(1, H, T, D, device="cuda", dtype=torch.bfloat16).normal_(generator=g)
    k = torch.randn(1, 1, T, D, device="cuda", generator=g).to(torch.bfloat16)
    rules = ("prev", "first", "offset:2")
    got = ops.attention_stats(q, k, rules=rules, backend="triton")
    tail = q[:, -3:]  # the last heads: their third plane lies past 2^31 elements
    want = ops.attention_stats(tail.double(), k.double(), rules=rules, backend="reference")
    for rule in rules:
        torch.testing.assert_close(got[rule][:, -3:].double(), want[rule], atol=2e-3, rtol=2e-3, msg=rule)
