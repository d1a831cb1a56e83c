"""Non-finite inputs (docs/decisions/nan-semantics.md): every backend gives what the reference
gives, bit for bit in where NaN and Inf land, on NaN/+Inf/-Inf anywhere in the inputs.

Encoder inputs are small integers, so pre-activations are exact in float32 whatever the
summation order: indices (including the NaN-first / index-ascending rule) must match exactly.
"""
import math
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel_testing import require
from pyinterp import ops

settings.register_profile("nan-ci", max_examples=10, deadline=None, derandomize=True,
                          suppress_health_check=list(HealthCheck), print_blob=True)
settings.register_profile("nan-thorough", max_examples=300, deadline=None,
                          suppress_health_check=list(HealthCheck))
PROFILE = settings.get_profile(
    "nan-thorough" if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else "nan-ci")


def _examples(backend):
    """Fewer examples for the interpreted Triton backend (~1000x slower than torch)."""
    return settings(PROFILE, max_examples=min(4, PROFILE.max_examples) if backend == "triton"
                    else PROFILE.max_examples)

BACKENDS = ["cpu", "triton", "cuda"]
NAN, INF = float("nan"), float("inf")
SPECIALS = [NAN, INF, -INF]


def _same(a, b, what, **tol):
    """Equal, with NaN where the other has NaN and the same infinities."""
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    assert torch.equal(a.isnan(), b.isnan()), f"{what}: NaN positions differ\n{a}\n{b}"
    torch.testing.assert_close(a, b, equal_nan=True, msg=what, **(tol or dict(atol=0, rtol=0)))


def _ints(g, shape, lo=-3, hi=3):
    return torch.randint(lo, hi + 1, shape, generator=g).float()


def _poke(t, g, n, values=SPECIALS):
    flat = t.view(-1)
    for _ in range(n):
        i = int(torch.randint(flat.numel(), (1,), generator=g))
        flat[i] = values[int(torch.randint(len(values), (1,), generator=g))]
    return t


# ------------------------------------------------------------------ sparse encoders
ENCODERS = {
    "topk": lambda x, W, b, bd, k, **kw: ops.topk_encode(x, W, b, bd, k, **kw),
    "threshold": lambda x, W, b, bd, k, **kw: ops.threshold_encode(x, W, b, bd, 0.5, **kw),
    "jumprelu": lambda x, W, b, bd, k, **kw: ops.threshold_encode(
        x, W, b, bd, torch.linspace(-1, 2, W.shape[1]), **kw),
    "batchtopk": lambda x, W, b, bd, k, **kw: ops.batchtopk_encode(x, W, b, bd, k, **kw),
}


def _encode_case(seed, n, d_in, d_sae, where, n_special, values=SPECIALS):
    g = torch.Generator().manual_seed(seed)
    x, W = _ints(g, (n, d_in)), _ints(g, (d_in, d_sae), -2, 2)
    b, bd = _ints(g, (d_sae,)), _ints(g, (d_in,), -1, 1)
    target = {"x": x, "W_enc": W, "b_enc": b, "b_dec": bd}[where]
    _poke(target, g, n_special, values)
    return x, W, b, bd


# The GPU backends fold b_dec into the bias (x @ W + (b_enc - b_dec @ W)); with an infinity
# inside W_enc or b_dec that form can give NaN where (x - b_dec) @ W + b_enc gives +-inf
# (inf - inf, 0 * inf). The cpu backend computes the reference's form.
FOLDS = ("triton", "cuda")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(ENCODERS))
def test_encoders_match_reference_on_non_finite(backend, kind):
    device = require(backend)
    enc = ENCODERS[kind]

    @_examples(backend)
    @given(st.integers(0, 2**31 - 1), st.integers(1, 5), st.integers(1, 8), st.integers(1, 40),
           st.sampled_from(["x", "W_enc", "b_enc", "b_dec"]), st.integers(1, 4), st.data())
    def check(seed, n, d_in, d_sae, where, n_special, data):
        k = data.draw(st.integers(1, d_sae))
        values = [NAN] if backend in FOLDS and where in ("W_enc", "b_dec") else SPECIALS
        x, W, b, bd = _encode_case(seed, n, d_in, d_sae, where, n_special, values)
        rv, ri = enc(x, W, b, bd, k, backend="reference")
        v, i = enc(*(t.to(device) for t in (x, W, b, bd)), k, backend=backend)
        _same(v, rv, f"{kind} values")
        assert torch.equal(i.cpu(), ri), f"{kind} indices\n{i}\n{ri}"

    check()


@pytest.mark.parametrize("backend", FOLDS)
@pytest.mark.parametrize("kind", list(ENCODERS))
def test_infinite_weights_stay_non_finite_on_folding_backends(backend, kind):
    """Every row whose code the reference makes non-finite is non-finite here too (NaN may
    stand for +-inf): never a silently finite row."""
    device = require(backend)
    enc = ENCODERS[kind]
    for seed in range(6 if backend == "triton" else 40):
        x, W, b, bd = _encode_case(seed, 3, 4, 12, ("W_enc", "b_dec")[seed % 2], 2, [INF, -INF])
        rv, _ = enc(x, W, b, bd, 4, backend="reference")
        v, _ = enc(*(t.to(device) for t in (x, W, b, bd)), 4, backend=backend)
        bad_ref = ~torch.isfinite(rv).all(1)
        bad = ~torch.isfinite(v.cpu()).all(1)
        assert not (bad_ref & ~bad).any(), (seed, rv, v)


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_nan_in_x_or_in_a_column(backend):
    """The issue's cases: one NaN in x makes that row's code NaN (latents 0..k-1, as NaNs rank
    by index); a NaN column of W_enc ranks first in every row, value NaN."""
    device = require(backend)
    g = torch.Generator().manual_seed(0)
    x, W, b = torch.randn(4, 16, generator=g), torch.randn(16, 48, generator=g), torch.zeros(48)
    x[1, 3] = NAN
    v, i = ops.topk_encode(x.to(device), W.to(device), b.to(device), None, 5, backend=backend)
    assert v[1].isnan().all() and i[1].tolist() == [0, 1, 2, 3, 4]
    assert not v[[0, 2, 3]].isnan().any()
    W[:, 37] = NAN
    W[5, 9] = NAN
    x[1, 3] = 0.5
    v, i = ops.topk_encode(x.to(device), W.to(device), b.to(device), None, 5, backend=backend)
    assert (i[:, :2].cpu() == torch.tensor([9, 37])).all() and v[:, :2].isnan().all()
    rv, ri = ops.topk_encode(x, W, b, None, 5, backend="reference")
    _same(v, rv, "values", atol=1e-5, rtol=1e-5)
    assert torch.equal(i.cpu(), ri)


# ------------------------------------------------------------------ sparse decode
@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_decode_propagates_like_reference(backend):
    device = require(backend)

    @_examples(backend)
    @given(st.integers(0, 2**31 - 1), st.integers(1, 6), st.integers(1, 8), st.integers(1, 30),
           st.sampled_from(["values", "W_dec", "b_dec"]), st.integers(1, 3), st.data())
    def check(seed, n, k, d_sae, where, n_special, data):
        d_in = data.draw(st.integers(1, 20))
        g = torch.Generator().manual_seed(seed)
        vals, W, b = _ints(g, (n, k)), _ints(g, (d_sae, d_in)), _ints(g, (d_in,))
        idx = torch.randint(d_sae, (n, k), generator=g)
        _poke({"values": vals, "W_dec": W, "b_dec": b}[where], g, n_special)
        ref = ops.sparse_decode(vals, idx, W, b, backend="reference")
        got = ops.sparse_decode(*(t.to(device) for t in (vals, idx, W, b)), backend=backend)
        _same(got, ref, "sparse_decode")

    check()


# ------------------------------------------------------------------ attention
@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_matches_reference_on_non_finite(backend):
    device = require(backend)
    all_rules = ("prev", "duplicate", "induction", "first")

    @_examples(backend)
    @given(st.integers(0, 2**31 - 1), st.integers(1, 2), st.integers(1, 3), st.integers(1, 70),
           st.integers(1, 6), st.sampled_from(["q", "k", "both"]), st.integers(1, 3),
           st.booleans(), st.booleans())
    def check(seed, B, H, T, D, where, n_special, causal, padded):
        g = torch.Generator().manual_seed(seed)
        q, k = _ints(g, (B, H, T, D), -2, 2) / 2, _ints(g, (B, H, T, D), -2, 2) / 2
        if where in ("q", "both"):
            _poke(q, g, n_special)
        if where in ("k", "both"):
            _poke(k, g, n_special)
        tok = torch.randint(0, 4, (B, T), generator=g)
        kpm = (torch.rand(B, T, generator=g) < 0.2) if padded else None
        rules = all_rules if causal else ("prev", "first")
        kw = dict(rules=rules, causal=causal, key_padding_mask=kpm)
        ref = ops.attention_stats(q, k, tok, backend="reference", **kw)
        dev = lambda t: None if t is None else t.to(device)  # noqa: E731
        got = ops.attention_stats(dev(q), dev(k), dev(tok), backend=backend,
                                  **dict(kw, key_padding_mask=dev(kpm)))
        tol = dict(atol=1e-4, rtol=1e-4)
        _same(got.lse, ref.lse, "lse", **tol)
        _same(got.entropy, ref.entropy, "entropy", **tol)
        for r in rules:
            _same(got.mass[r], ref.mass[r], f"mass[{r}]", **tol)
        pk = dict(causal=causal, key_padding_mask=kpm)
        rp = ops.attention_pattern(q, k, backend="reference", **pk)
        gp = ops.attention_pattern(dev(q), dev(k), backend=backend,
                                   **dict(pk, key_padding_mask=dev(kpm)))
        _same(gp, rp, "pattern", **tol)

    check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_issue_cases(backend):
    """A NaN query: that query's statistics are NaN, the others' unchanged. A key of -inf:
    every later query that attends to it (its score is NaN or +-inf) is non-finite, earlier
    ones are not; masked (padding) NaN keys change nothing."""
    device = require(backend)
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 2, 9, 8, generator=g), torch.randn(1, 2, 9, 8, generator=g)
    base = ops.attention_stats(q.to(device), k.to(device), rules=("prev",), backend=backend)
    q2 = q.clone()
    q2[0, 1, 4, 0] = NAN
    st_ = ops.attention_stats(q2.to(device), k.to(device), rules=("prev",), backend=backend)
    assert st_.lse[0, 1, 4].isnan() and st_.entropy[0, 1, 4].isnan()
    keep = torch.ones(2, 9, dtype=torch.bool)
    keep[1, 4] = False
    torch.testing.assert_close(st_.lse[0][keep].cpu(), base.lse[0][keep].cpu())
    k2 = k.clone()
    k2[0, :, 3, :] = -INF
    st_ = ops.attention_stats(q.to(device), k2.to(device), rules=("prev",), backend=backend)
    ref = ops.attention_stats(q, k2, rules=("prev",), backend="reference")
    _same(st_.lse, ref.lse, "lse", atol=1e-5, rtol=1e-5)
    assert torch.isfinite(st_.lse[0, :, :3]).all() and not torch.isfinite(st_.lse[0, :, 3:]).all()
    k3 = k.clone()
    k3[0, :, 5] = NAN
    kpm = torch.zeros(1, 9, dtype=torch.bool)
    kpm[0, 5] = True
    st_ = ops.attention_stats(q.to(device), k3.to(device), key_padding_mask=kpm.to(device),
                              rules=("prev",), backend=backend)
    assert torch.isfinite(st_.lse).all() and torch.isfinite(st_.entropy).all()


# ------------------------------------------------------------------ SoLU, persona
@pytest.mark.parametrize("backend", BACKENDS)
def test_solu_and_persona_match_reference_on_non_finite(backend):
    device = require(backend)

    @_examples(backend)
    @given(st.integers(0, 2**31 - 1), st.integers(1, 5), st.integers(1, 40), st.integers(1, 3),
           st.sampled_from(["mean", "last", "none"]))
    def check(seed, n, d, n_special, reduce):
        g = torch.Generator().manual_seed(seed)
        x = _poke(torch.randn(n, d, generator=g), g, n_special)
        w, b = torch.randn(d, generator=g), torch.randn(d, generator=g)
        _same(ops.solu(x.to(device), backend=backend), ops.solu(x, backend="reference"), "solu",
              atol=1e-5, rtol=1e-4)
        _same(ops.solu_ln(x.to(device), w.to(device), b.to(device), backend=backend),
              ops.solu_ln(x, w, b, backend="reference"), "solu_ln", atol=1e-4, rtol=1e-4)
        h = _poke(torch.randn(2, n, 4, d, generator=g), g, n_special)
        v = torch.randn(3, d, generator=g)
        m = torch.rand(n, 4, generator=g) < 0.7
        ref = ops.persona_project(h, v, m, reduce=reduce, backend="reference")
        got = ops.persona_project(h.to(device), v.to(device), m.to(device), reduce=reduce,
                                  backend=backend)
        _same(got, ref, f"persona_project {reduce}", atol=1e-4, rtol=1e-4)

    check()


def test_reference_semantics_are_torchs():
    """The oracle itself: top-k ranks NaN first like torch.topk (but by index), ReLU keeps NaN
    like torch.relu, attention is NaN where torch's softmax is."""
    pre = torch.tensor([[1.0, NAN, 3.0, NAN, -INF, INF]])
    v, i = ops.topk_encode(torch.eye(6)[None, 0] * 0 + 1, torch.diag(pre[0]).nan_to_num(0) * 0,
                           pre[0], None, 6, backend="reference")
    assert i.tolist() == [[1, 3, 5, 2, 0, 4]]
    assert math.isnan(v[0, 0]) and math.isnan(v[0, 1]) and v[0, 2] == INF and v[0, 5] == 0
    q = torch.randn(1, 1, 3, 4)
    q[0, 0, 1, 0] = NAN
    k = torch.randn(1, 1, 3, 4)
    torch_p = torch.softmax((q @ k.transpose(-1, -2)) / 2, -1)
    p = ops.attention_pattern(q, k, causal=False, backend="reference")
    assert torch.equal(torch_p.isnan(), p.isnan())
