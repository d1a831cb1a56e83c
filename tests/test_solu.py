"""SoLU family: every op x every backend x dtype x awkward shapes against the reference.

Forward and backward (x, weight, bias, and the gradient through the pre-LN output), the
multi-block (long-row) path of the Triton kernels, gradcheck in float64 for reference and cpu,
inf/NaN inputs, the SoLU paper's examples, and argument validation.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import pyinterp
from kernel_testing import BACKEND_PARAMS, assert_close, require
from pyinterp.reference import solu as ref

# The Triton interpreter computes masked-off lanes too (e.g. -inf * 0); they are never stored.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")

ALL_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
DTYPE_PARAMS = [pytest.param(d, id=str(d).replace("torch.", "")) for d in ALL_DTYPES]

# Leading shapes (), (3,), (2, 3) and T=1, last dims 1, 7, 128, 1000, 4097.
SHAPES = [(1,), (7,), (3, 128), (2, 3, 1000), (4, 1, 7), (2, 4097)]
SHAPE_PARAMS = [pytest.param(s, id="x".join(map(str, s))) for s in SHAPES]


def _inputs(shape, dtype, device, affine=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = shape[-1]
    x = (torch.randn(shape, generator=g) * 1.5).to(dtype).to(device)
    w = (1 + 0.5 * torch.randn(d, generator=g)).to(dtype).to(device) if affine else None
    b = (0.5 * torch.randn(d, generator=g)).to(dtype).to(device) if affine else None
    return x, w, b


def _leaf(t):
    return None if t is None else t.detach().clone().requires_grad_(True)


def _run(op, backend, x, w, b, grads):
    """Run op on fresh leaves, backprop the given upstream grads; return outputs and grads."""
    xl, wl, bl = _leaf(x), _leaf(w), _leaf(b)
    if op == "solu":
        out = pyinterp.ops.solu(xl, backend=backend)
        outs = (out,)
    else:
        outs = pyinterp.ops.solu_ln(xl, wl, bl, return_pre_ln=True, backend=backend)
    loss = sum((o.float() * g.float()).sum() for o, g in zip(outs, grads))
    loss.backward()
    return outs, tuple(None if t is None else t.grad for t in (xl, wl, bl))


def _upstream(op, shape, dtype, device):
    g = torch.Generator().manual_seed(1)
    n = 1 if op == "solu" else 2
    return tuple(torch.randn(shape, generator=g).to(dtype).to(device) for _ in range(n))


def _check_against_reference(op, backend, shape, dtype, device, affine=True):
    x, w, b = _inputs(shape, dtype, device, affine)
    grads = _upstream(op, shape, dtype, device)
    outs, dgrads = _run(op, backend, x, w, b, grads)
    ref_outs, ref_grads = _run(op, "reference", x.cpu(), None if w is None else w.cpu(),
                               None if b is None else b.cpu(), tuple(g.cpu() for g in grads))
    for o, r in zip(outs, ref_outs):
        assert o.dtype == dtype and o.shape == r.shape and o.device.type == device.type
        assert_close(o, r, dtype)
    for name, got, want in zip(("x", "weight", "bias"), dgrads, ref_grads):
        if want is None:
            assert got is None, name
            continue
        assert got is not None, f"no gradient for {name}"
        assert got.dtype == want.dtype, name
        # weight/bias grads sum over rows: scale the tolerance with the row count
        rows = max(1, x.numel() // x.shape[-1]) if name != "x" else 1
        tol = {"atol": 6e-2 * rows, "rtol": 6e-2} if dtype == torch.bfloat16 else {}
        if dtype == torch.float16 and name != "x":
            tol = {"atol": 1e-2 * rows, "rtol": 1e-2}
        assert_close(got, want, dtype, grad=True, **tol)


# ---------------------------------------------------------------------------------------
# every op x backend x dtype x shape


@pytest.mark.parametrize("shape", SHAPE_PARAMS)
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("op", ["solu", "solu_ln"])
def test_matches_reference(op, backend, dtype, shape):
    device = require(backend)
    _check_against_reference(op, backend, shape, dtype, device)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("params", ["none", "weight", "bias"])
def test_solu_ln_optional_affine(backend, params):
    device = require(backend)
    x, w, b = _inputs((3, 33), torch.float32, device)
    w = w if params == "weight" else None
    b = b if params == "bias" else None
    grads = _upstream("solu_ln", (3, 33), torch.float32, device)
    outs, dgrads = _run("solu_ln", backend, x, w, b, grads)
    ref_outs, ref_grads = _run("solu_ln", "reference", x.cpu(), None if w is None else w.cpu(),
                               None if b is None else b.cpu(), tuple(g.cpu() for g in grads))
    for o, r in zip(outs, ref_outs):
        assert_close(o, r)
    for got, want in zip(dgrads, ref_grads):
        assert (got is None) == (want is None)
        if want is not None:
            assert_close(got, want, grad=True)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_gradient_through_pre_ln_only(backend):
    device = require(backend)
    x, w, b = _inputs((2, 19), torch.float32, device)
    got_want = []
    for be, dev in ((backend, device), ("reference", torch.device("cpu"))):
        xl = _leaf(x.to(dev))
        _, pre = pyinterp.ops.solu_ln(xl, w.to(dev), b.to(dev), return_pre_ln=True, backend=be)
        (pre.float() ** 2).sum().backward()
        got_want.append(xl.grad)
    got, want = got_want
    assert_close(got, want, grad=True)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("op", ["solu", "solu_ln"])
def test_non_contiguous_and_empty_rows(op, backend):
    device = require(backend)
    x = torch.randn(9, 6).to(device).t()  # (6, 9), not contiguous
    assert not x.is_contiguous()
    w = torch.randn(9).to(device)
    if op == "solu":
        assert_close(pyinterp.ops.solu(x, backend=backend), ref.solu(x.cpu()))
        empty = pyinterp.ops.solu(torch.empty(0, 5, device=device), backend=backend)
    else:
        assert_close(pyinterp.ops.solu_ln(x, w, None, backend=backend),
                     ref.solu_ln(x.cpu(), w.cpu(), None))
        empty = pyinterp.ops.solu_ln(torch.empty(0, 5, device=device), None, None, backend=backend)
    assert empty.shape == (0, 5)


# ---------------------------------------------------------------------------------------
# the Triton multi-block (online softmax) path, forced with a small block


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64],
                         ids=["float32", "bfloat16", "float64"])
@pytest.mark.parametrize("shape", [(3, 200), (2, 129), (1, 64)], ids=["3x200", "2x129", "1x64"])
@pytest.mark.parametrize("op", ["solu", "solu_ln"])
def test_triton_multi_block_path(op, shape, dtype, monkeypatch):
    device = require("triton")
    import pyinterp.backends.triton.solu as tk

    monkeypatch.setattr(tk, "MAX_BLOCK", 64)
    block, single, _ = tk.block_config(shape[-1])
    assert block == 64 and single == (shape[-1] <= 64)
    _check_against_reference(op, "triton", shape, dtype, device)


def test_triton_multi_block_row_starting_with_minus_inf(monkeypatch):
    """A first block of -inf must not poison the online sum of the later blocks."""
    device = require("triton")
    import pyinterp.backends.triton.solu as tk

    monkeypatch.setattr(tk, "MAX_BLOCK", 16)
    x = torch.randn(2, 50)
    x[:, :20] = float("-inf")
    got = pyinterp.ops.solu(x.to(device), backend="triton")
    want = ref.solu(x)
    assert_close(got, want)
    assert torch.isfinite(got[:, 20:]).all()


# ---------------------------------------------------------------------------------------
# gradcheck in float64


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("shape", [(3, 5), (2, 1), (1, 9)], ids=["3x5", "2x1", "1x9"])
def test_gradcheck(backend, shape):
    require(backend)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(shape[-1], generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(shape[-1], generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: pyinterp.ops.solu(t, backend=backend), (x,))
    assert torch.autograd.gradcheck(
        lambda t, ww, bb: pyinterp.ops.solu_ln(t, ww, bb, return_pre_ln=True, backend=backend),
        (x, w, b))
    assert torch.autograd.gradcheck(
        lambda t: pyinterp.ops.solu_ln(t, None, None, eps=1e-3, backend=backend), (x,))


# ---------------------------------------------------------------------------------------
# inf / NaN behave like the reference


def _special_rows():
    inf, nan = float("inf"), float("nan")
    return torch.tensor([
        [1.0, -inf, 0.5, 2.0, -1.0],   # -inf: that element is -inf * 0 = NaN
        [1.0, inf, 0.5, 2.0, -1.0],    # +inf: the row is NaN
        [1.0, nan, 0.5, 2.0, -1.0],    # NaN: the row is NaN
        [-inf, -inf, -inf, -inf, -inf],  # all -inf: NaN
        [80.0, -80.0, 0.0, 88.0, -100.0],  # large finite values: no overflow
        [1.0, 2.0, 3.0, 4.0, 5.0],     # ordinary row beside them is unaffected
    ])


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("op", ["solu", "solu_ln"])
def test_inf_and_nan_like_reference(op, backend):
    device = require(backend)
    x = _special_rows()
    w = torch.linspace(0.5, 1.5, 5)
    if op == "solu":
        got = pyinterp.ops.solu(x.to(device), backend=backend)
        want = ref.solu(x)
    else:
        got = pyinterp.ops.solu_ln(x.to(device), w.to(device), None, backend=backend)
        want = ref.solu_ln(x, w, None)
    assert torch.equal(torch.isnan(got.cpu()), torch.isnan(want)), (got, want)
    assert_close(got, want)
    assert torch.isfinite(got[-2:]).all()


# ---------------------------------------------------------------------------------------
# the paper's examples (PAPERS.md, Elhage et al. 2022)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_paper_examples(backend):
    device = require(backend)
    x = torch.tensor([[4.0, 1.0, 4.0, 1.0], [4.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    y = pyinterp.ops.solu(x.to(device), backend=backend).cpu()
    # "≈": SoLU sharpens towards the largest entries
    assert_close(y[0], torch.tensor([2.0, 0.0, 2.0, 0.0]), atol=0.1, rtol=0)
    assert_close(y[1], torch.tensor([4.0, 0.0, 0.0, 0.0]), atol=0.25, rtol=0)
    assert_close(y[2], torch.full((4,), 0.25))
    # LN ignores scale, so LN(SoLU(x)) = LN(x * exp(x)) (with eps negligible against both)
    z = torch.randn(3, 16)
    got = pyinterp.ops.solu_ln(z.to(device), None, None, eps=1e-10, backend=backend).cpu()
    assert_close(got, F.layer_norm(z * z.exp(), (16,), eps=1e-10), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------
# CPU-specific: long rows, threads, determinism


def test_cpu_long_row_and_thread_counts():
    require("cpu")
    x = torch.randn(2, 262147)
    w = torch.randn(262147)
    assert_close(pyinterp.ops.solu_ln(x, w, None, backend="cpu"), ref.solu_ln(x, w, None),
                 atol=1e-4, rtol=1e-4)
    x = torch.randn(37, 300, requires_grad=True)
    w = torch.randn(300, requires_grad=True)
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2, 2):
            torch.set_num_threads(threads)
            x.grad = w.grad = None
            pyinterp.ops.solu_ln(x, w, None, backend="cpu").sum().backward()
            results.append((x.grad.clone(), w.grad.clone()))
    finally:
        torch.set_num_threads(old)
    assert_close(results[0][1], results[1][1], grad=True)
    # same thread count: bit-identical (per-thread partial sums, no atomics)
    assert torch.equal(results[1][0], results[2][0]) and torch.equal(results[1][1], results[2][1])


# ---------------------------------------------------------------------------------------
# argument validation


def test_bad_inputs_name_the_argument():
    x = torch.randn(2, 4)
    w = torch.ones(4)
    with pytest.raises(TypeError, match="x"):
        pyinterp.ops.solu([1.0, 2.0])
    with pytest.raises(TypeError, match="x"):
        pyinterp.ops.solu(torch.ones(2, 4, dtype=torch.int64))
    with pytest.raises(TypeError, match="x"):
        pyinterp.ops.solu_ln(torch.ones(2, 4, dtype=torch.complex64), w, None)
    with pytest.raises(ValueError, match="x"):
        pyinterp.ops.solu(torch.empty(3, 0))
    with pytest.raises(ValueError, match="x"):
        pyinterp.ops.solu(torch.tensor(1.0))
    with pytest.raises(ValueError, match="weight"):
        pyinterp.ops.solu_ln(x, torch.ones(5), None)
    with pytest.raises(ValueError, match="bias"):
        pyinterp.ops.solu_ln(x, w, torch.ones(3))
    with pytest.raises(TypeError, match="weight"):
        pyinterp.ops.solu_ln(x, torch.ones(4, dtype=torch.int32), None)
    with pytest.raises(TypeError, match="bias"):
        pyinterp.ops.solu_ln(x, w, "zeros")
    with pytest.raises(ValueError, match="eps"):
        pyinterp.ops.solu_ln(x, w, None, eps=0.0)
    with pytest.raises(TypeError, match="return_pre_ln"):
        pyinterp.ops.solu_ln(x, w, None, return_pre_ln=1)
