"""Sparse SAE ops (topk/threshold/batchtopk encode, sparse_decode) on every backend against
the pure-torch reference: forward and backward, each dtype, awkward sizes (d_sae = 1, k = 1,
k = d_sae, non powers of two), the tie rule, deterministic mode, memory, bad input.

Inputs are small dyadic rationals (multiples of 1/4 with few terms), so every pre-activation is
exact in any summation order and dtype: indices must then match the reference exactly,
including among the many exact ties such data produce (the tie rule).
"""
from __future__ import annotations

import pytest
import torch

from kernel_testing import BACKEND_PARAMS, assert_close, require
from pyinterp import ops
from pyinterp.ops import sae as sae_ops

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# (N, d_in, d_sae, k): d_sae = 1, k = d_sae (non power of two), k = 1, several column tiles
SIZES = [(5, 8, 1, 1), (7, 12, 37, 37), (9, 16, 100, 7), (4, 8, 300, 1)]


def dyadic(*shape, scale=4, lo=-4, hi=5):
    return torch.randint(lo, hi, shape).double() / scale


def make(n, d_in, d_sae, dtype, device, with_b_dec=True):
    x = dyadic(n, d_in)
    W = dyadic(d_in, d_sae, scale=8, lo=-3, hi=4)
    be = dyadic(d_sae, scale=4)
    bd = dyadic(d_in, scale=4) if with_b_dec else None
    ts = [t.to(device=device, dtype=dtype).requires_grad_() if t is not None else None
          for t in (x, W, be, bd)]
    return ts


def _grads(out, inputs, weight):
    loss = (out.float() * weight).sum()
    live = [t for t in inputs if t is not None]
    return torch.autograd.grad(loss, live, allow_unused=True)


def _check_encoder(op, backend, dtype, n, d_in, d_sae, extra, with_b_dec=True):
    device = require(backend)
    inputs = make(n, d_in, d_sae, dtype, device, with_b_dec)
    fn = getattr(ops, op)
    v, i = fn(*inputs, *extra, backend=backend)
    ref_inputs = [t.detach().cpu().requires_grad_() if t is not None else None for t in inputs]
    rv, ri = fn(*ref_inputs, *extra, backend="reference")
    assert v.dtype == dtype and i.dtype == torch.int64
    assert v.shape == rv.shape, (v.shape, rv.shape)
    assert torch.equal(i.cpu(), ri), "indices differ from the reference (tie rule)"
    assert_close(v, rv)
    weight = torch.linspace(-1, 2, v.numel()).reshape(v.shape)
    g = _grads(v.cpu() if device.type == "cpu" else v, inputs, weight.to(device))
    rg = _grads(rv, ref_inputs, weight)
    for a, b in zip(g, rg):
        assert (a is None) == (b is None)
        if a is not None:
            assert_close(a, b, grad=True)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("size", SIZES, ids=str)
def test_topk_encode(backend, dtype, size):
    n, d_in, d_sae, k = size
    if backend == "triton" and dtype != torch.float32 and size in (SIZES[1], SIZES[3]):
        pytest.skip("interpreter time: the 16-bit triton paths are covered by the smaller sizes")
    _check_encoder("topk_encode", backend, dtype, n, d_in, d_sae, (k,))


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_topk_encode_without_b_dec(backend):
    _check_encoder("topk_encode", backend, torch.float32, 6, 8, 50, (5,), with_b_dec=False)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("mode", ["relu", "jumprelu", "max_active"])
def test_threshold_encode(backend, dtype, mode):
    n, d_in, d_sae = 9, 12, 41
    if mode == "relu":
        extra = (0.0,)
    elif mode == "jumprelu":
        thr = (torch.arange(d_sae) % 5 - 1).double() / 4  # includes negative thresholds
        extra = (thr.to(device=require(backend), dtype=dtype),)
    else:
        extra = (0.25,)
    if mode == "max_active":
        device = require(backend)
        inputs = make(n, d_in, d_sae, dtype, device)
        v, i = ops.threshold_encode(*inputs, 0.25, max_active=3, backend=backend)
        rv, ri = ops.threshold_encode(*[t.detach().cpu() for t in inputs], 0.25, max_active=3,
                                      backend="reference")
        assert v.shape == (n, 3) and torch.equal(i.cpu(), ri)
        assert_close(v, rv)
        return
    _check_encoder("threshold_encode", backend, dtype, n, d_in, d_sae, extra)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("size", [(8, 12, 37, 3), (3, 8, 5, 5), (6, 8, 1, 1)], ids=str)
def test_batchtopk_encode(backend, dtype, size):
    n, d_in, d_sae, k = size
    _check_encoder("batchtopk_encode", backend, dtype, n, d_in, d_sae, (k,))


def test_batchtopk_keeps_k_times_n():
    x, W, be, bd = [t.detach() for t in make(16, 8, 64, torch.float64, torch.device("cpu"))]
    v, i = ops.batchtopk_encode(x, W, be, bd, 4, backend="reference")
    pre = torch.relu((x - bd) @ W + be)
    # positives rank above zeros, so the kept positive entries are min(k*N, #positive)
    assert int((v > 0).sum()) == min(4 * 16, int((pre > 0).sum()))
    assert (v[:, :-1] >= v[:, 1:]).all()


def test_tie_rule_reference():
    pre = torch.tensor([[1.0, 2.0, 2.0, 0.0, 2.0, 3.0], [5.0, 5.0, 5.0, 5.0, 5.0, 5.0]])
    from pyinterp.reference.sae import topk_select
    v, i = topk_select(pre, 3)
    assert i.tolist() == [[5, 1, 2], [0, 1, 2]]
    assert v.tolist() == [[3.0, 2.0, 2.0], [5.0, 5.0, 5.0]]


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_topk_matches_torch_topk_random(backend):
    """Gaussian data (no exact ties): indices equal torch.topk's."""
    device = require(backend)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 16, generator=g)
    W = torch.randn(16, 70, generator=g)
    be = torch.randn(70, generator=g)
    bd = torch.randn(16, generator=g)
    v, i = ops.topk_encode(*(t.to(device) for t in (x, W, be, bd)), 9, backend=backend)
    tv, ti = torch.topk((x - bd) @ W + be, 9)
    assert torch.equal(i.cpu(), ti)
    assert_close(v, tv.relu())


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("size", [(5, 8, 1, 1), (7, 13, 37, 37), (9, 24, 100, 6)], ids=str)
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_sparse_decode(backend, dtype, size, deterministic):
    device = require(backend)
    n, d_in, d_sae, k = size
    values = dyadic(n, k).to(device=device, dtype=dtype).requires_grad_()
    indices = torch.randint(0, d_sae, (n, k)).to(device)
    W = dyadic(d_sae, d_in, scale=8).to(device=device, dtype=dtype).requires_grad_()
    b = dyadic(d_in).to(device=device, dtype=dtype).requires_grad_()
    out = ops.sparse_decode(values, indices, W, b, deterministic=deterministic, backend=backend)
    rv, rW, rb = (t.detach().cpu().requires_grad_() for t in (values, W, b))
    ref = ops.sparse_decode(rv, indices.cpu(), rW, rb, backend="reference")
    assert out.dtype == dtype and out.shape == (n, d_in)
    assert_close(out, ref)
    weight = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    g = _grads(out, [values, W, b], weight.to(device))
    rg = _grads(ref, [rv, rW, rb], weight)
    for a, r in zip(g, rg):
        assert_close(a, r, grad=True)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_sparse_decode_deterministic_bits(backend):
    """deterministic=True: grad W_dec is bit-identical across runs (many duplicate latents)."""
    device = require(backend)
    n, k, d_sae, d_in = 24, 6, 5, 16
    g = torch.Generator().manual_seed(3)
    values = torch.randn(n, k, generator=g).to(device).requires_grad_()
    indices = torch.randint(0, d_sae, (n, k), generator=g).to(device)
    W = torch.randn(d_sae, d_in, generator=g).to(device).requires_grad_()
    grads = []
    for _ in range(2):
        out = ops.sparse_decode(values, indices, W, deterministic=True, backend=backend)
        grads.append(torch.autograd.grad(out.square().sum(), W)[0])
    assert torch.equal(grads[0], grads[1])
    # against the oracle's gradient, in float64
    rW = W.detach().cpu().double().requires_grad_()
    ref = ops.sparse_decode(values.detach().cpu().double(), indices.cpu(), rW, backend="reference")
    assert_close(grads[0], torch.autograd.grad(ref.square().sum(), rW)[0].float(), grad=True)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_encoder_backward_deterministic_mode(backend):
    """Under torch.use_deterministic_algorithms the encoders' grad W_enc / b_enc take the
    sort-based path on GPU backends: bit-identical across runs and equal to the reference."""
    device = require(backend)
    x, W, be, bd = make(12, 8, 6, torch.float32, device)  # 6 latents: many entries per latent
    old = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        grads = []
        for _ in range(2):
            v, i = ops.topk_encode(x, W, be, bd, 3, backend=backend)
            grads.append(torch.autograd.grad((v * v).sum(), [W, be]))
    finally:
        torch.use_deterministic_algorithms(old)
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    rx, rW, rbe, rbd = (t.detach().cpu().requires_grad_() for t in (x, W, be, bd))
    rv, _ = ops.topk_encode(rx, rW, rbe, rbd, 3, backend="reference")
    for a, r in zip(grads[0], torch.autograd.grad((rv * rv).sum(), [rW, rbe])):
        assert_close(a, r, grad=True)


def test_cpu_encoder_backward_bit_reproducible_across_threads():
    require("cpu")
    x, W, be, bd = make(32, 16, 20, torch.float32, torch.device("cpu"))
    res = []
    old = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            v, i = ops.topk_encode(x, W, be, bd, 5, backend="cpu")
            res.append(torch.autograd.grad(v.sum(), [W, be]))
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(a, b) for a, b in zip(*res))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_float64(backend):
    require(backend)
    g = torch.Generator().manual_seed(5)
    x, W, be, bd = (torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_()
                    for s in ((4, 3), (3, 7), (7,), (3,)))
    f = lambda *a: ops.topk_encode(*a, 3, backend=backend)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, W, be, bd))
    f = lambda *a: ops.threshold_encode(*a, backend=backend)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, W, be, bd))
    f = lambda *a: ops.batchtopk_encode(*a, 2, backend=backend)[0]  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, W, be, bd))
    values = torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_()
    indices = torch.randint(0, 7, (4, 3), generator=g)
    Wd = torch.randn(7, 3, generator=g, dtype=torch.float64).requires_grad_()
    f = lambda v, w, b: ops.sparse_decode(v, indices, w, b, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(f, (values, Wd, bd))


def test_leading_dims_and_decode_roundtrip():
    x, W, be, bd = (t.detach() for t in make(6, 8, 20, torch.float32, torch.device("cpu")))
    v, i = ops.topk_encode(x.view(2, 3, 8), W, be, bd, 4)
    assert v.shape == (2, 3, 4) and i.shape == (2, 3, 4)
    Wd = dyadic(20, 8).float()
    out = ops.sparse_decode(v, i, Wd, bd)
    dense = ops.dense_from_sparse(v, i, 20) @ Wd + bd
    assert out.shape == (2, 3, 8)
    assert_close(out, dense)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_empty_batch_and_tied_weights(backend):
    """N = 0 gives empty codes; W_enc may be a non-contiguous view (tied W_enc = W_dec.T)."""
    require(backend)
    W_dec = dyadic(20, 8).float().requires_grad_()
    be, bd = torch.zeros(20, requires_grad=True), torch.zeros(8, requires_grad=True)
    x = dyadic(5, 8).float()
    for op, extra in (("topk_encode", (3,)), ("threshold_encode", ()), ("batchtopk_encode", (2,))):
        v, i = getattr(ops, op)(x[:0], W_dec.t(), be, bd, *extra, backend=backend)
        assert v.shape[0] == 0 and i.shape[0] == 0
        assert ops.sparse_decode(v, i, W_dec, bd, backend=backend).shape == (0, 8)
    v, i = ops.topk_encode(x, W_dec.t(), be, bd, 3, backend=backend)
    out = ops.sparse_decode(v, i, W_dec, bd, backend=backend)
    g = torch.autograd.grad(out.square().sum(), [W_dec, be, bd])
    rv, ri = ops.topk_encode(x, W_dec.t().contiguous(), be, bd, 3, backend="reference")
    ref = ops.sparse_decode(rv, ri, W_dec, bd, backend="reference")
    rg = torch.autograd.grad(ref.square().sum(), [W_dec, be, bd])
    for a, b in zip(g, rg):
        assert_close(a, b, grad=True)


def test_cpu_topk_never_builds_dense_preactivation():
    """d_sae = 2^20 (the largest supported size): a dense (N, d_sae) float32 pre-activation
    would be 512 MiB; the chunked epilogue holds 16 MiB of it at a time."""
    require("cpu")
    from pyinterp.bench.timing import peak_memory

    n, d_in, d_sae, k = 128, 4, 1 << 20, 8
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, d_in, generator=g)
    W = torch.randn(d_in, d_sae, generator=g)
    be = torch.zeros(d_sae)
    out = {}
    peak = peak_memory(lambda: out.update(r=ops.topk_encode(x, W, be, None, k, backend="cpu")))
    assert peak < 128 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    v, i = out["r"]
    rows = torch.tensor([0, 77, 127])
    tv, ti = torch.topk(x[rows] @ W, k)
    assert torch.equal(i[rows], ti)
    Wd = torch.randn(d_sae, d_in, generator=g)
    dec = ops.sparse_decode(v, i, Wd, backend="cpu")
    assert_close(dec[rows], (tv.relu().unsqueeze(-1) * Wd[ti]).sum(1))


def test_update_activity_and_counts():
    counter = torch.zeros(6, dtype=torch.int64)
    indices = torch.tensor([[0, 2], [2, 5]])
    values = torch.tensor([[1.0, 0.5], [0.0, 2.0]])
    ops.update_activity(counter, indices, 6, values=values)
    assert counter.tolist() == [0, 1, 0, 1, 1, 0]
    ops.update_activity(counter, torch.tensor([[1]]))
    assert counter.tolist() == [1, 0, 1, 2, 2, 1]
    assert sae_ops.activation_counts(values, indices, 6).tolist() == [1, 0, 1, 0, 0, 1]
    with pytest.raises(ValueError, match="counter"):
        ops.update_activity(counter, indices, 7)


BAD = [
    (lambda x, W, be, bd: ops.topk_encode(x, W, be, bd, 0), ValueError, "k must be >= 1"),
    (lambda x, W, be, bd: ops.topk_encode(x, W, be, bd, 11), ValueError, "k must be <= 10"),
    (lambda x, W, be, bd: ops.topk_encode(x, W, be, bd, 2.0), TypeError, "k must be an int"),
    (lambda x, W, be, bd: ops.topk_encode(x, W.t(), be, bd, 2), ValueError, "W_enc"),
    (lambda x, W, be, bd: ops.topk_encode(x, W, be[:3], bd, 2), ValueError, "b_enc"),
    (lambda x, W, be, bd: ops.topk_encode(x, W, be, bd[:2], 2), ValueError, "b_dec"),
    (lambda x, W, be, bd: ops.topk_encode(x.double(), W, be, bd, 2), TypeError, "dtype"),
    (lambda x, W, be, bd: ops.topk_encode(x.int(), W, be, bd, 2), TypeError, "x must have dtype"),
    (lambda x, W, be, bd: ops.topk_encode(x, W.to("meta"), be, bd, 2), ValueError, "same device"),
    (lambda x, W, be, bd: ops.batchtopk_encode(x, W, be, bd, 0), ValueError, "k must be >= 1"),
    (lambda x, W, be, bd: ops.threshold_encode(x, W, be, bd, torch.zeros(3)), ValueError,
     "threshold"),
    (lambda x, W, be, bd: ops.threshold_encode(x, W, be, bd, "0"), TypeError, "threshold"),
    (lambda x, W, be, bd: ops.threshold_encode(x, W, be, bd, max_active=0), ValueError,
     "max_active"),
    (lambda x, W, be, bd: ops.sparse_decode(torch.ones(4, 2), torch.tensor([[0, 10]] * 4),
                                            W.t().contiguous()), ValueError, "indices must lie"),
    (lambda x, W, be, bd: ops.sparse_decode(torch.ones(4, 2), torch.tensor([[0, -1]] * 4),
                                            W.t().contiguous()), ValueError, "indices must lie"),
    (lambda x, W, be, bd: ops.sparse_decode(torch.ones(4, 2), torch.zeros(4, 3, dtype=torch.long),
                                            W.t().contiguous()), ValueError, "indices must have"),
    (lambda x, W, be, bd: ops.sparse_decode(torch.ones(4, 2), torch.zeros(4, 2),
                                            W.t().contiguous()), TypeError, "indices must have dtype"),
    (lambda x, W, be, bd: ops.sparse_decode(torch.ones(4, 2).double(),
                                            torch.zeros(4, 2, dtype=torch.long),
                                            W.t().contiguous()), TypeError, "values is"),
    (lambda x, W, be, bd: ops.sparse_decode(torch.ones(4, 2), torch.zeros(4, 2, dtype=torch.long),
                                            W.t().contiguous(), bd[:3]), ValueError, "b_dec"),
    (lambda x, W, be, bd: ops.sparse_decode(torch.ones(4, 2), torch.zeros(4, 2, dtype=torch.long),
                                            W[0]), ValueError, "W_dec must be 2-D"),
]


@pytest.mark.parametrize("case", range(len(BAD)))
def test_bad_input_names_the_argument(case):
    fn, exc, match = BAD[case]
    x, W, be, bd = torch.randn(4, 6), torch.randn(6, 10), torch.randn(10), torch.randn(6)
    with pytest.raises(exc, match=match):
        fn(x, W, be, bd)


def test_unsupported_backend_name_raises():
    with pytest.raises(ValueError, match="backend"):
        ops.topk_encode(torch.randn(2, 3), torch.randn(3, 4), torch.randn(4), None, 1,
                        backend="nope")
