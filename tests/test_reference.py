"""The oracle (pyinterp.reference, ``backend="reference"``) against independent brute force:
plain Python loops over rows, tokens, keys and latents, written from the papers' definitions
(tests/test_*_ops.py compare every kernel backend with the oracle; this file checks the oracle
itself), and its backward against finite differences (gradcheck)."""
from __future__ import annotations

import math

import pytest
import torch

from pyinterp import ops


def _close(got, want, **kw):
    torch.testing.assert_close(got.double(), torch.as_tensor(want, dtype=torch.float64),
                               **({"atol": 1e-10, "rtol": 1e-9} | kw))


def _rand(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64) * scale


def _quarters(*shape, seed=0, lo=-4, hi=5):
    """Small multiples of 1/4: exact in float64, with many exact ties (the tie rule)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, shape, generator=g).double() / 4


# ------------------------------------------------------------------------------------ SoLU
def _solu_row(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    s = sum(e)
    return [v * ei / s for v, ei in zip(row, e)]


def test_solu_and_solu_ln_oracle():
    x = _rand(3, 7, scale=2.0)
    w, b = _rand(7, seed=1), _rand(7, seed=2)
    pre = [_solu_row(r) for r in x.tolist()]
    _close(ops.solu(x, backend="reference"), pre)
    eps = 1e-5
    want = []
    for r in pre:
        mean = sum(r) / len(r)
        var = sum((v - mean) ** 2 for v in r) / len(r)
        want.append([(v - mean) / math.sqrt(var + eps) * wi + bi
                     for v, wi, bi in zip(r, w.tolist(), b.tolist())])
    y, p = ops.solu_ln(x, w, b, eps=eps, return_pre_ln=True, backend="reference")
    _close(y, want)
    _close(p, pre)


# ------------------------------------------------------------------------------------ SAE
def _preacts(x, W, be, bd):
    n, d_in = x.shape
    d_sae = W.shape[1]
    return [[sum((x[i, a] - (bd[a] if bd is not None else 0)) * W[a, j] for a in range(d_in)).item()
             + be[j].item() for j in range(d_sae)] for i in range(n)]


def _by_rule(row, cols):
    """Latents ordered by the tie rule: value descending, then index ascending."""
    return sorted(cols, key=lambda j: (-row[j], j))


def _padded(rows, width):
    vals = [[v for v, _ in r] + [0.0] * (width - len(r)) for r in rows]
    idx = [[j for _, j in r] + [0] * (width - len(r)) for r in rows]
    return vals, idx


def _sae_inputs(seed=0, n=6, d_in=5, d_sae=11):
    return (_quarters(n, d_in, seed=seed), _quarters(d_in, d_sae, seed=seed + 1, lo=-2, hi=3),
            _quarters(d_sae, seed=seed + 2), _quarters(d_in, seed=seed + 3))


@pytest.mark.parametrize("k", [1, 4, 11])
def test_topk_encode_oracle(k):
    x, W, be, bd = _sae_inputs()
    pre = _preacts(x, W, be, bd)
    rows = [[(max(r[j], 0.0), j) for j in _by_rule(r, range(len(r)))[:k]] for r in pre]
    want_v, want_i = _padded(rows, k)
    v, i = ops.topk_encode(x, W, be, bd, k, backend="reference")
    assert i.tolist() == want_i
    _close(v, want_v)


@pytest.mark.parametrize("max_active", [None, 2])
def test_threshold_encode_oracle(max_active):
    x, W, be, bd = _sae_inputs(seed=4)
    thr = _quarters(11, seed=9, lo=-2, hi=3)
    pre = _preacts(x, W, be, bd)
    rows = []
    for r in pre:
        kept = _by_rule(r, [j for j in range(len(r)) if r[j] > thr[j].item()])
        rows.append([(r[j], j) for j in kept[:max_active]])
    width = max_active or max(1, max(len(r) for r in rows))
    want_v, want_i = _padded(rows, width)
    v, i = ops.threshold_encode(x, W, be, bd, thr, max_active=max_active, backend="reference")
    assert i.tolist() == want_i
    _close(v, want_v)


def test_batchtopk_encode_oracle():
    x, W, be, bd = _sae_inputs(seed=7)
    k, (n, d_sae) = 2, (x.shape[0], W.shape[1])
    pre = _preacts(x, W, be, bd)
    flat = sorted(((max(pre[r][j], 0.0), r * d_sae + j) for r in range(n) for j in range(d_sae)),
                  key=lambda t: (-t[0], t[1]))[:k * n]
    rows = [[] for _ in range(n)]
    for v, f in flat:
        if v > 0:
            rows[f // d_sae].append((v, f % d_sae))
    rows = [sorted(r, key=lambda t: (-t[0], t[1])) for r in rows]
    want_v, want_i = _padded(rows, max(1, max(len(r) for r in rows)))
    v, i = ops.batchtopk_encode(x, W, be, bd, k, backend="reference")
    assert i.tolist() == want_i
    _close(v, want_v)


def test_sparse_decode_oracle():
    values, W, b = _rand(4, 3), _rand(7, 5, seed=1), _rand(5, seed=2)
    indices = torch.tensor([[0, 6, 6], [1, 2, 3], [5, 5, 5], [4, 0, 2]])
    want = [[b[c].item() + sum(values[n, j].item() * W[indices[n, j], c].item() for j in range(3))
             for c in range(5)] for n in range(4)]
    _close(ops.sparse_decode(values, indices, W, b, backend="reference"), want)


# ------------------------------------------------------------------------------- attention
def test_attention_stats_and_pattern_oracle():
    B, H, Hkv, T, d = 2, 4, 2, 6, 3
    q, k = _rand(B, H, T, d), _rand(B, Hkv, T, d, seed=1)
    tokens = torch.tensor([[1, 2, 1, 2, 1, 3], [0, 0, 1, 0, 0, 1]])
    pad = torch.zeros(B, T, dtype=torch.bool)
    pad[1, 0] = True  # row 1, query 0 attends to nothing
    rules = ("prev", "first", "duplicate", "induction", "offset:2")
    scale = 0.7
    st = ops.attention_stats(q, k, tokens, rules, key_padding_mask=pad, scale=scale,
                             backend="reference")
    pattern = ops.attention_pattern(q, k, key_padding_mask=pad, scale=scale, backend="reference")
    tok = tokens.tolist()
    for b in range(B):
        for h in range(H):
            for i in range(T):
                keys = [j for j in range(i + 1) if not pad[b, j]]
                s = {j: scale * sum(q[b, h, i, c].item() * k[b, h // 2, j, c].item()
                                    for c in range(d)) for j in keys}
                p = {}
                if keys:
                    m = max(s.values())
                    lse = m + math.log(sum(math.exp(v - m) for v in s.values()))
                    p = {j: math.exp(s[j] - lse) for j in keys}
                else:
                    lse = -math.inf
                rule_keys = {"prev": {i - 1}, "first": {0}, "offset:2": {i - 2},
                             "duplicate": {j for j in range(i) if tok[b][j] == tok[b][i]},
                             "induction": {j for j in range(1, i + 1) if tok[b][j - 1] == tok[b][i]}}
                assert st.lse[b, h, i].item() == pytest.approx(lse, abs=1e-10)
                ent = -sum(v * math.log(v) for v in p.values() if v > 0)
                assert st.entropy[b, h, i].item() == pytest.approx(ent, abs=1e-10)
                for rule in rules:
                    want = sum(p.get(j, 0.0) for j in rule_keys[rule])
                    assert st.mass[rule][b, h, i].item() == pytest.approx(want, abs=1e-10), rule
                for j in range(T):
                    assert pattern[b, h, i, j].item() == pytest.approx(p.get(j, 0.0), abs=1e-10)


# --------------------------------------------------------------------------------- persona
@pytest.mark.parametrize("reduce", ["mean", "sum", "last", "none"])
def test_persona_project_and_pool_oracle(reduce):
    L, B, T, D, P = 2, 2, 4, 3, 2
    h, v = _rand(L, B, T, D), _rand(L, P, D, seed=1)
    mask = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    got = ops.persona_project(h, v, mask, reduce, backend="reference")
    for l in range(L):
        for b in range(B):
            sel = [t for t in range(T) if mask[b, t] != 0]
            for p in range(P):
                u = v[l, p] / v[l, p].norm()
                proj = [sum(h[l, b, t, c].item() * u[c].item() for c in range(D)) for t in range(T)]
                wsum = sum(mask[b, t].item() * proj[t] for t in range(T))
                if reduce == "none":
                    for t in range(T):
                        want = proj[t] if t in sel else 0.0
                        assert got[l, b, t, p].item() == pytest.approx(want, abs=1e-10)
                    continue
                want = {"sum": wsum, "mean": wsum / mask[b].sum().item(),
                        "last": proj[sel[-1]]}[reduce]
                assert got[l, b, p].item() == pytest.approx(want, abs=1e-10)
    if reduce != "none":
        pooled = ops.persona_pool(h, mask, reduce, backend="reference")
        for l in range(L):
            for b in range(B):
                sel = [t for t in range(T) if mask[b, t] != 0]
                for c in range(D):
                    wsum = sum(mask[b, t].item() * h[l, b, t, c].item() for t in range(T))
                    want = {"sum": wsum, "mean": wsum / mask[b].sum().item(),
                            "last": h[l, b, sel[-1], c].item()}[reduce]
                    assert pooled[l, b, c].item() == pytest.approx(want, abs=1e-10)


# ------------------------------------------------------------------------- oracle backward
def test_oracle_backward_matches_finite_differences():
    g = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)  # noqa: E731
    x, w, b = r(3, 5), r(5), r(5)
    assert torch.autograd.gradcheck(
        lambda x, w, b: ops.solu_ln(x, w, b, return_pre_ln=True, backend="reference"), (x, w, b))
    xs, W, be, bd = r(4, 3), r(3, 7), r(7), r(3)
    for op, extra in (("topk_encode", (3,)), ("threshold_encode", ()), ("batchtopk_encode", (2,))):
        assert torch.autograd.gradcheck(
            lambda *a: getattr(ops, op)(*a, *extra, backend="reference")[0], (xs, W, be, bd)), op
    values, Wd = r(4, 3), r(7, 3)
    idx = torch.randint(0, 7, (4, 3), generator=g)
    assert torch.autograd.gradcheck(
        lambda v, W: ops.sparse_decode(v, idx, W, None, backend="reference"), (values, Wd))
    h, vec = r(2, 2, 3, 4), r(2, 2, 4)
    mask = torch.tensor([[1, 0, 1], [1, 1, 0]])
    for reduce in ("mean", "last", "none"):
        assert torch.autograd.gradcheck(
            lambda h, v: ops.persona_project(h, v, mask, reduce, backend="reference"), (h, vec))
