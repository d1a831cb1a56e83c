"""torch.compile(fullgraph=True) over every public op: no graph break, and forward and
backward equal eager (the ops are torch.library custom ops with fake implementations and
registered autograd). One small compile per op; AOTAutograd with the eager backend ("aot_eager")
runs the fake implementations and traces the backward like Inductor does, without Inductor's
C++ code generation (minutes on 2 cores). Also: the custom ops called directly."""
from __future__ import annotations

import pytest
import torch

import pyinterp
from kernel_testing import assert_close, require
from pyinterp import ops


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _leaves(*ts):
    return [t.detach().clone().requires_grad_(t.is_floating_point()) for t in ts]


def _check(fn, *inputs, backend="cpu"):
    """fn(*inputs) -> tensor: compiled with fullgraph=True equals eager, forward and backward."""
    require(backend)
    with pyinterp.backend(backend):
        compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
        a, b = _leaves(*inputs), _leaves(*inputs)
        got, want = compiled(*a), fn(*b)
        assert_close(got, want)
        diff = [i for i, t in enumerate(a) if t.requires_grad]
        if got.requires_grad:
            ga = torch.autograd.grad(got.sum(), [a[i] for i in diff], allow_unused=True)
            gb = torch.autograd.grad(want.sum(), [b[i] for i in diff], allow_unused=True)
            for x, y in zip(ga, gb):
                assert (x is None) == (y is None)
                if x is not None:
                    assert_close(x, y, grad=True)


def _sae(n=6, d_in=8, d_sae=20):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(n, d_in, generator=g), torch.randn(d_in, d_sae, generator=g) / 3,
            torch.randn(d_sae, generator=g) / 4, torch.randn(d_in, generator=g) / 4)


def test_solu_and_solu_ln():
    x, w, b = torch.randn(3, 5, 9), torch.randn(9), torch.randn(9)

    def fn(x, w, b):
        y, pre = ops.solu_ln(x, w, b, return_pre_ln=True)
        return y * 2 + pre + ops.solu(x)
    _check(fn, x, w, b)


def test_topk_encode_and_sparse_decode():
    x, W, be, bd = _sae()
    Wd = W.t().contiguous()

    def fn(x, W, be, bd, Wd):
        v, i = ops.topk_encode(x, W, be, bd, 4)
        return ops.sparse_decode(v, i, Wd, bd, check_indices=False) + v.sum()
    _check(fn, x, W, be, bd, Wd)


@pytest.mark.parametrize("mode", ["relu", "jumprelu_max_active"])
def test_threshold_encode(mode):
    """The width of a threshold code depends on the data: an unbacked size in the graph."""
    x, W, be, bd = _sae()
    Wd = W.t().contiguous()
    thr = torch.linspace(-0.2, 0.3, W.shape[1])

    def fn(x, W, be, bd, Wd):
        if mode == "relu":
            v, i = ops.threshold_encode(x, W, be, bd, 0.1)
        else:
            v, i = ops.threshold_encode(x, W, be, bd, thr, max_active=5)
        return ops.sparse_decode(v, i, Wd, None)
    _check(fn, x, W, be, bd, Wd)


def test_batchtopk_encode():
    x, W, be, bd = _sae()

    def fn(x, W, be, bd):
        v, i = ops.batchtopk_encode(x, W, be, bd, 3)
        return (v * v).sum(-1)
    _check(fn, x, W, be, bd)


def test_sparse_decode_checks_indices_at_run_time():
    values, W = torch.ones(2, 2), torch.randn(5, 3)
    fn = torch.compile(lambda v, i, W: ops.sparse_decode(v, i, W), fullgraph=True,
                       backend="aot_eager")
    require("cpu")
    with pyinterp.backend("cpu"), pytest.raises(ValueError, match="indices must lie"):
        fn(values, torch.tensor([[0, 1], [2, 7]]), W)


def test_attention_stats_and_pattern():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 4, 9, 8, generator=g), torch.randn(1, 2, 9, 8, generator=g)
    tokens = torch.randint(0, 3, (1, 9), generator=g)

    def fn(q, k, tokens):
        st = ops.attention_stats(q, k, tokens, ("prev", "induction", "offset:2"))
        top, _ = ops.attention_pattern(q, k, heads=[0, 3], queries=(2, 7), top_m=3)
        pat = ops.attention_pattern(q, k, heads=1)
        return st.lse + st.entropy + st["induction"] + top.sum() + pat.sum()
    _check(fn, q, k, tokens)


def test_persona_project_and_pool():
    g = torch.Generator().manual_seed(2)
    base = torch.randn(2, 7, 3, 6, generator=g)
    vectors = torch.randn(3, 4, 6, generator=g)
    mask = torch.rand(2, 7, generator=g) > 0.3
    mask[:, 0] = True

    def fn(base, vectors):
        layers = [base[:, :, l] for l in range(3)]  # strided views, read in place
        mean = ops.persona_project(layers, vectors, mask, "mean")
        last = ops.persona_project(layers, vectors, mask, "last")
        tokens = ops.persona_project(layers, vectors[0], mask, "none").sum(2)
        pooled = ops.persona_pool(layers, mask, "sum") @ vectors[0].t()
        return mean + last + tokens + pooled
    _check(fn, base, vectors)


def test_multi_decode():
    g = torch.Generator().manual_seed(3)
    values, W = torch.rand(5, 4, generator=g), torch.randn(3, 6, 7, generator=g) / 3
    indices = torch.randint(0, 18, (5, 4), generator=g)
    b = torch.randn(3, 7, generator=g)

    def fn(values, W, b):
        from pyinterp.ops.multi_decode import clt_decoder_map

        out = ops.multi_decode(values, indices % 6, W[:1], b[:1], check_indices=False)
        clt = ops.multi_decode(values, indices % 12, W, b[:2], decoder_map=clt_decoder_map(2),
                               check_indices=False)
        return out.sum(0) + clt.sum(0)
    _check(fn, values, W, b)


@pytest.mark.parametrize("max_active", [None, 6])
def test_jumprelu_select_gate_l0(max_active):
    x, W, be, bd = _sae()
    theta = torch.full((W.shape[1],), 0.05)

    def fn(x, W, be, bd, theta):
        pre, idx = ops.jumprelu_select(x, W, be, bd, theta, 0.1, max_active=max_active)
        f = ops.jumprelu_gate(pre, idx, theta, 0.1, out_dtype=x.dtype)
        return f.sum(-1) + ops.jumprelu_l0(pre, idx, theta, 0.1)
    _check(fn, x, W, be, bd, theta)


def test_reference_backend_is_traced_as_plain_torch():
    """The oracle is torch code that dynamo traces directly (where it branches on the data,
    e.g. its top-k NaN fallback, a compiled graph would break: it is a correctness tool)."""
    x, w = torch.randn(4, 6), torch.randn(6)
    _check(lambda x, w: ops.solu_ln(x, w, None) + ops.solu(x), x, w, backend="reference")


def test_custom_ops_are_registered_and_match_the_ops():
    require("cpu")
    names = ["solu", "solu_ln", "topk_encode", "threshold_encode", "batchtopk_encode",
             "sparse_decode", "attention_stats", "attention_pattern", "persona_project",
             "persona_pool", "multi_decode", "jumprelu_select"]
    assert all(hasattr(torch.ops.pyinterp, n) for n in names)
    x, W, be, bd = _sae()
    v, i, mask = torch.ops.pyinterp.topk_encode(x, W, be, bd, 4, "cpu")
    rv, ri = ops.topk_encode(x, W, be, bd, 4, backend="cpu")
    assert torch.equal(v, rv) and torch.equal(i, ri) and torch.equal(mask, rv > 0)
    xg = x.clone().requires_grad_()
    y, _ = torch.ops.pyinterp.solu(xg, "cpu")
    (gx,) = torch.autograd.grad(y.square().sum(), xg)
    xr = x.clone().requires_grad_()
    (rgx,) = torch.autograd.grad(ops.solu(xr, backend="reference").square().sum(), xr)
    assert_close(gx, rgx, grad=True)
    layers = [torch.randn(2, 3, 4) for _ in range(2)]
    vec = torch.randn(2, 5, 4)
    assert_close(torch.ops.pyinterp.persona_project(layers, vec, None, "mean", True, "cpu"),
                 ops.persona_project(layers, vec, backend="reference"))
