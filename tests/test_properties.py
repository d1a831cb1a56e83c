"""Property-based tests (hypothesis): every op on every backend that runs here, on random
shapes, dtypes, k, masks and magnitudes (up to 1e4), against the reference backend.

Examples are few and small (the Triton interpreter is ~1000x slower than torch) and
derandomised, so CI is fast and reproducible; run with HYPOTHESIS_PROFILE=thorough for more.
"""
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel_testing import require
from pyinterp import ops

settings.register_profile("ci", max_examples=12, deadline=None, derandomize=True,
                          suppress_health_check=list(HealthCheck), print_blob=True)
settings.register_profile("thorough", max_examples=200, deadline=None,
                          suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

BACKENDS = ["cpu", "triton"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
TOL = {torch.float64: 1e-9, torch.float32: 2e-4, torch.float16: 1e-2, torch.bfloat16: 6e-2}


def _examples(backend):
    """Fewer, smaller examples for the interpreted Triton backend."""
    return settings(max_examples=4 if backend == "triton" else 12)


def _rand(draw, shape, dtype, mag):
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * mag).to(dtype)


def _close(a, b, dtype, scale=1.0):
    tol = TOL[dtype] * max(1.0, scale)
    torch.testing.assert_close(a.double().cpu(), b.double().cpu(), atol=tol, rtol=TOL[dtype],
                               equal_nan=True)


def _to(device, *tensors):
    """The examples are drawn on CPU; the backend under test runs them on its device (CUDA for
    triton/cuda on a GPU machine), the reference on CPU."""
    return [None if t is None else t.to(device) for t in tensors]


@st.composite
def rows(draw, max_rows=6, max_d=40):
    shape = (draw(st.integers(1, max_rows)), draw(st.integers(1, max_d)))
    dtype = draw(st.sampled_from(DTYPES))
    mag = draw(st.sampled_from([1e-3, 1.0, 30.0, 1e4]))
    return _rand(draw, shape, dtype, mag), dtype, mag


# ------------------------------------------------------------------------------------- SoLU
@pytest.mark.parametrize("backend", BACKENDS)
def test_solu_and_solu_ln_match_reference(backend):
    device = require(backend)

    @_examples(backend)
    @given(rows(), st.booleans())
    def check(case, affine):
        x, dtype, mag = case
        (xd,) = _to(device, x)
        _close(ops.solu(xd, backend=backend), ops.solu(x, backend="reference"), dtype, mag)
        d = x.shape[-1]
        w = torch.linspace(0.5, 1.5, d).to(dtype) if affine else None
        b = torch.linspace(-1, 1, d).to(dtype) if affine else None
        out = ops.solu_ln(xd, *_to(device, w, b), backend=backend)
        ref = ops.solu_ln(x, w, b, backend="reference")
        _close(out, ref, dtype, 10.0 if dtype in (torch.float16, torch.bfloat16) else 1.0)
        assert torch.isfinite(out).all()

    check()


# ------------------------------------------------------------------------------------ sparse SAE
@st.composite
def encoder_case(draw, max_n=6, max_in=8, max_sae=24):
    n, d_in, d_sae = draw(st.integers(1, max_n)), draw(st.integers(1, max_in)), draw(st.integers(1, max_sae))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    mag = draw(st.sampled_from([1e-2, 1.0, 1e3]))
    x = _rand(draw, (n, d_in), dtype, mag)
    W = _rand(draw, (d_in, d_sae), dtype, 1.0)
    b_enc = _rand(draw, (d_sae,), dtype, 0.1)
    b_dec = _rand(draw, (d_in,), dtype, 0.1) if draw(st.booleans()) else None
    k = draw(st.integers(1, d_sae))
    return x, W, b_enc, b_dec, k, dtype, mag


def _pre(x, W, b_enc, b_dec):
    xc = x.double() - (b_dec.double() if b_dec is not None else 0)
    return xc @ W.double() + b_enc.double()


def _check_selection(values, indices, pre, dtype, mag, must_take=None):
    """Valid code: values = ReLU(pre) at the indices, distinct indices per row, and every
    selected pre-activation >= every unselected one (up to rounding)."""
    tol = TOL[dtype] * max(1.0, mag) * 10
    for r in range(pre.shape[0]):
        v, i = values[r].double(), indices[r]
        live = v != 0
        assert len(set(i[live].tolist())) == int(live.sum())
        _close(v[live], torch.relu(pre[r, i[live]]), dtype, max(1.0, mag) * 10)
        if must_take is not None:
            chosen = torch.zeros(pre.shape[1], dtype=torch.bool)
            chosen[i[:must_take]] = True
            if (~chosen).any():
                assert pre[r, chosen].min() >= pre[r, ~chosen].max() - tol


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_encode_is_a_valid_top_k_and_decodes_like_reference(backend):
    device = require(backend)

    @_examples(backend)
    @given(encoder_case())
    def check(case):
        x, W, b_enc, b_dec, k, dtype, mag = case
        v, i = ops.topk_encode(*_to(device, x, W, b_enc, b_dec), k, backend=backend)
        v, i = v.cpu(), i.cpu()
        assert v.shape == i.shape == (x.shape[0], k) and i.dtype == torch.int64
        assert (v >= 0).all() and (v[:, :-1] >= v[:, 1:]).all()
        pre = _pre(x, W, b_enc, b_dec)
        _check_selection(v, i, pre, dtype, mag, must_take=k)
        vr, _ = ops.topk_encode(x, W, b_enc, b_dec, k, backend="reference")
        _close(v, vr, dtype, mag * 10)

    check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_threshold_and_batchtopk_codes_are_valid(backend):
    device = require(backend)

    @_examples(backend)
    @given(encoder_case(), st.sampled_from([0.0, 0.5]))
    def check(case, thr):
        x, W, b_enc, b_dec, k, dtype, mag = case
        pre = _pre(x, W, b_enc, b_dec)
        on_device = _to(device, x, W, b_enc, b_dec)
        v, i = (t.cpu() for t in ops.threshold_encode(*on_device, thr, backend=backend))
        _check_selection(v, i, pre, dtype, mag)
        tol = TOL[dtype] * max(1.0, mag) * 10
        dense = ops.dense_from_sparse(v, i, W.shape[1]).double()
        clear = (pre - thr).abs() > tol  # away from the threshold the code is exact
        expect = torch.where(pre > thr, pre, torch.zeros_like(pre))
        _close(dense[clear], expect[clear], dtype, max(1.0, mag) * 10)
        vb, ib = (t.cpu() for t in ops.batchtopk_encode(*on_device, k, backend=backend))
        _check_selection(vb, ib, pre, dtype, mag)
        assert int((vb > 0).sum()) <= k * x.shape[0]

    check()


@st.composite
def decode_case(draw):
    n, k, d_sae, d_in = (draw(st.integers(1, 6)), draw(st.integers(1, 5)), draw(st.integers(1, 20)),
                         draw(st.integers(1, 9)))
    dtype = draw(st.sampled_from(DTYPES))
    mag = draw(st.sampled_from([1e-2, 1.0, 1e3]))
    values = _rand(draw, (n, k), dtype, mag)
    seed = draw(st.integers(0, 2**31 - 1))
    indices = torch.randint(0, d_sae, (n, k), generator=torch.Generator().manual_seed(seed))
    W = _rand(draw, (d_sae, d_in), dtype, 1.0)
    b = _rand(draw, (d_in,), dtype, 1.0) if draw(st.booleans()) else None
    return values, indices, W, b, dtype, mag, draw(st.booleans())


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_decode_forward_and_backward_match_reference(backend):
    device = require(backend)

    @_examples(backend)
    @given(decode_case())
    def check(case):
        values, indices, W, b, dtype, mag, det = case
        outs = {}
        for name, dev in ((backend, device), ("reference", torch.device("cpu"))):
            v, idx, w, bb = _to(dev, values, indices, W, b)
            v, w = v.requires_grad_(True), w.requires_grad_(True)
            out = ops.sparse_decode(v, idx, w, bb, deterministic=det, backend=name)
            weight = torch.linspace(-1, 1, out.numel(), device=dev).view_as(out)
            out.double().pow(2).sum().backward() if dtype == torch.float64 else \
                (out.float() * weight).sum().backward()
            outs[name] = (out, v.grad, w.grad)
        scale = mag * values.shape[1] * 4
        for a, r in zip(outs[backend], outs["reference"]):
            _close(a, r, dtype, scale)

    check()


# ------------------------------------------------------------------------------------ attention
@st.composite
def qk_case(draw):
    B, H, T, d = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 12)), draw(st.integers(1, 8))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16]))
    mag = draw(st.sampled_from([0.1, 1.0, 10.0]))
    q = _rand(draw, (B, H, T, d), dtype, mag)
    kk = _rand(draw, (B, H, T, d), dtype, mag)
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 4, (B, T), generator=g)
    mask = (torch.rand(B, T, generator=g) < 0.2) if draw(st.booleans()) else None
    return q, kk, tokens, mask, draw(st.booleans()), dtype


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_stats_and_pattern_match_reference(backend):
    device = require(backend)
    all_rules = ("prev", "first", "duplicate", "induction", "offset:2")

    @_examples(backend)
    @given(qk_case())
    def check(case):
        q, k, tokens, mask, causal, dtype = case
        rules = all_rules if causal else ("prev", "first", "offset:2")
        qd, kd, td, md = _to(device, q, k, tokens, mask)
        got = ops.attention_stats(qd, kd, td, rules, causal=causal, key_padding_mask=md,
                                  backend=backend)
        got.lse, got.entropy = got.lse.cpu(), got.entropy.cpu()
        got.mass = {r: m.cpu() for r, m in got.mass.items()}
        ref = ops.attention_stats(q, k, tokens, rules, causal=causal, key_padding_mask=mask,
                                  backend="reference")
        tol = 1e-9 if dtype == torch.float64 else 2e-3
        torch.testing.assert_close(got.lse, ref.lse, atol=tol * 10, rtol=tol)
        torch.testing.assert_close(got.entropy, ref.entropy, atol=tol * 10, rtol=tol)
        for r in rules:
            torch.testing.assert_close(got.mass[r], ref.mass[r], atol=tol, rtol=tol)
        p = ops.attention_pattern(qd, kd, causal=causal, key_padding_mask=md, backend=backend).cpu()
        pr = ops.attention_pattern(q, k, causal=causal, key_padding_mask=mask, backend="reference")
        torch.testing.assert_close(p, pr, atol=tol, rtol=tol, equal_nan=True)

    check()


# ------------------------------------------------------------------------------------ persona
@st.composite
def persona_case(draw):
    L, B, T, D, P = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 6)),
                     draw(st.integers(1, 16)), draw(st.integers(1, 4)))
    dtype = draw(st.sampled_from(DTYPES))
    mag = draw(st.sampled_from([1e-2, 1.0, 1e3]))
    h = _rand(draw, (L, B, T, D), dtype, mag)
    v = _rand(draw, (L, P, D) if draw(st.booleans()) else (P, D), dtype, 1.0)
    seed = draw(st.integers(0, 2**31 - 1))
    mask = (torch.rand(B, T, generator=torch.Generator().manual_seed(seed)) < 0.7) \
        if draw(st.booleans()) else None
    if mask is not None:
        mask[:, 0] = True  # every row selects a token (an empty row is NaN by definition)
    reduce = draw(st.sampled_from(["mean", "sum", "last", "none"]))
    return h, v, mask, reduce, draw(st.booleans()), dtype, mag


@pytest.mark.parametrize("backend", BACKENDS)
def test_persona_project_matches_reference(backend):
    device = require(backend)

    @_examples(backend)
    @given(persona_case())
    def check(case):
        h, v, mask, reduce, normalize, dtype, mag = case
        got = ops.persona_project(*_to(device, h, v, mask), reduce, normalize, backend=backend)
        ref = ops.persona_project(h, v, mask, reduce, normalize, backend="reference")
        _close(got, ref, dtype, mag * h.shape[-1])

    check()
