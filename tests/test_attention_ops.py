"""attention_stats / attention_pattern: every backend x dtype x awkward T against the reference.

The statistics are forward-only (docs/decisions/attention-stats-no-grad.md), so there is no
backward to test; the reference itself is checked against hand-computed values below.
"""
import math

import pytest
import torch

from kernel_testing import BACKEND_PARAMS, require
from pyinterp import ops
from pyinterp.ops.attention import parse_rules

ALL_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
RULES = ("prev", "first", "duplicate", "induction", "offset:0", "offset:3")


def _tol(dtype):
    # Outputs are in the accumulation dtype; both sides read the same rounded inputs.
    return dict(atol=1e-9, rtol=1e-7) if dtype == torch.float64 else dict(atol=5e-5, rtol=1e-4)


def _inputs(B, H, Hkv, T, d, dtype, device, vocab=4, spread=2.0):
    q = (torch.randn(B, H, T, d) * spread).to(dtype).to(device)
    k = (torch.randn(B, Hkv, T, d) * spread).to(dtype).to(device)
    tokens = torch.randint(0, vocab, (B, T)).to(device)
    return q, k, tokens


def _compare_stats(got, want, dtype):
    tol = _tol(dtype)
    torch.testing.assert_close(got.lse.cpu(), want.lse.cpu(), **tol)
    torch.testing.assert_close(got.entropy.cpu(), want.entropy.cpu(), **tol)
    assert list(got.mass) == list(want.mass)
    for rule in want.mass:
        torch.testing.assert_close(got.mass[rule].cpu(), want.mass[rule].cpu(), **tol, msg=rule)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("T", [1, 7, 64, 130])
def test_stats_matches_reference(backend, dtype, T):
    device = require(backend)
    # GQA (2 query heads per key head); padding mask on the long cases.
    q, k, tokens = _inputs(2, 4 if backend != "triton" else 2, 2 if backend != "triton" else 1,
                           T, 24, dtype, device)
    kpm = None
    if T >= 64:
        kpm = (torch.rand(2, T) < 0.15).to(device)
        kpm[1, :5] = True  # left padding: early queries of row 1 attend to nothing
    got = ops.attention_stats(q, k, tokens, RULES, key_padding_mask=kpm, backend=backend)
    want = ops.attention_stats(q.cpu(), k.cpu(), tokens.cpu(), RULES,
                               key_padding_mask=None if kpm is None else kpm.cpu(), backend="reference")
    assert got.lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert got.lse.shape == got.entropy.shape == got.mass["prev"].shape == q.shape[:3]
    _compare_stats(got, want, dtype)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("T", [7, 130])
def test_stats_non_causal_offsets_and_scale(backend, T):
    device = require(backend)
    q, k, _ = _inputs(1, 2, 2, T, 16, torch.float32, device)
    rules = ("prev", "first", "offset:-2", "offset:5")
    got = ops.attention_stats(q, k, None, rules, causal=False, scale=0.7, backend=backend)
    want = ops.attention_stats(q.cpu(), k.cpu(), None, rules, causal=False, scale=0.7,
                               backend="reference")
    _compare_stats(got, want, torch.float32)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_stats_peaked_scores_entropy_is_stable(backend):
    """Large scores (peaked rows): the entropy must not cancel to garbage."""
    device = require(backend)
    q, k, tokens = _inputs(1, 2, 2, 40, 16, torch.float32, device, spread=6.0)
    got = ops.attention_stats(q, k, tokens, backend=backend)
    want = ops.attention_stats(q.cpu().double(), k.cpu().double(), tokens.cpu(), backend="reference")
    torch.testing.assert_close(got.entropy.cpu().double(), want.entropy, atol=2e-4, rtol=1e-3)
    assert (got.entropy >= -1e-4).all()


def test_reference_by_hand():
    """T = 3, one head, q = 0: uniform causal rows, so every mass is 1/(i+1) per selected key."""
    q = torch.zeros(1, 1, 3, 4)
    k = torch.randn(1, 1, 3, 4)
    tokens = torch.tensor([[5, 5, 5]])
    s = ops.attention_stats(q, k, tokens, ("prev", "first", "duplicate", "induction", "offset:0"),
                            backend="reference")
    torch.testing.assert_close(s.lse[0, 0], torch.log(torch.tensor([1.0, 2.0, 3.0])))
    torch.testing.assert_close(s.entropy[0, 0], torch.log(torch.tensor([1.0, 2.0, 3.0])))
    torch.testing.assert_close(s.mass["prev"][0, 0], torch.tensor([0.0, 1 / 2, 1 / 3]))
    torch.testing.assert_close(s.mass["first"][0, 0], torch.tensor([1.0, 1 / 2, 1 / 3]))
    # duplicate: j < i with the same token -> i/(i+1); induction: 1 <= j <= i -> i/(i+1)
    torch.testing.assert_close(s.mass["duplicate"][0, 0], torch.tensor([0.0, 1 / 2, 2 / 3]))
    torch.testing.assert_close(s.mass["induction"][0, 0], torch.tensor([0.0, 1 / 2, 2 / 3]))
    torch.testing.assert_close(s["offset:0"][0, 0], torch.tensor([1.0, 1 / 2, 1 / 3]))


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("T", [1, 7, 64, 130])
def test_pattern_matches_reference(backend, dtype, T):
    device = require(backend)
    q, k, _ = _inputs(2, 4, 2, T, 16, dtype, device)
    kpm = (torch.rand(2, T) < 0.2).to(device)
    kpm[:, 0] = False  # every query keeps at least key 0 (the softmax check below needs a key)
    a, b = T // 4, max(T // 4 + 1, 3 * T // 4)
    kw = dict(heads=[3, 0], queries=slice(a, b), key_padding_mask=kpm)
    got = ops.attention_pattern(q, k, backend=backend, **kw)
    want = ops.attention_pattern(q.cpu(), k.cpu(), backend="reference",
                                 **{**kw, "key_padding_mask": kpm.cpu()})
    assert got.shape == (2, 2, b - a, T)
    torch.testing.assert_close(got.cpu(), want, **_tol(dtype))
    # the rows are the full softmax restricted to the chosen heads and queries
    s = (q.cpu().double() @ k.cpu().double().repeat_interleave(2, 1).transpose(-1, -2)) / math.sqrt(16)
    mask = torch.ones(T, T, dtype=torch.bool).tril()[None, None] & ~kpm.cpu()[:, None, None, :]
    full = torch.softmax(s.masked_fill(~mask, float("-inf")), -1)[:, [3, 0], a:b]
    torch.testing.assert_close(got.cpu().double(), full, atol=1e-4 if dtype != torch.float64 else 1e-9,
                               rtol=1e-3)


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_pattern_top_m_and_non_causal(backend):
    device = require(backend)
    T = 33
    q, k, _ = _inputs(1, 2, 1, T, 16, torch.float32, device)
    vals, idx = ops.attention_pattern(q, k, queries=(0, 10), top_m=4, backend=backend)
    full = ops.attention_pattern(q.cpu(), k.cpu(), queries=(0, 10), backend="reference")
    want_v, want_i = torch.topk(full, 4, dim=-1)
    torch.testing.assert_close(vals.cpu(), want_v, atol=1e-5, rtol=1e-4)
    # query 0 attends only to key 0; query 1 to keys 0-1: the rest is marked -1
    assert idx[0, 0, 0, 0] == 0 and (idx[0, :, 0, 1:] == -1).all() and (idx[0, :, 1, 2:] == -1).all()
    ok = want_i >= 0
    assert torch.equal(idx.cpu()[ok & (want_v > 0)], want_i[ok & (want_v > 0)])
    nc = ops.attention_pattern(q, k, heads=1, causal=False, backend=backend)
    torch.testing.assert_close(nc.sum(-1).cpu(), torch.ones(1, 1, T), atol=1e-5, rtol=0)
    assert (nc[..., 0, 1:] > 0).all()


def test_auto_backend_and_non_contiguous_inputs():
    """Hook tensors arrive as (B, T, H, d); transposed views must work on every path."""
    q4 = torch.randn(2, 9, 4, 8)
    k4 = torch.randn(2, 9, 2, 8)
    tokens = torch.randint(0, 3, (2, 9))
    got = ops.attention_stats(q4.transpose(1, 2), k4.transpose(1, 2), tokens)
    want = ops.attention_stats(q4.transpose(1, 2).contiguous(), k4.transpose(1, 2).contiguous(),
                               tokens, backend="reference")
    _compare_stats(got, want, torch.float32)


# ------------------------------------------------------------------------------------------
# bad input


def _qk():
    return torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8)


@pytest.mark.parametrize("op", ["stats", "pattern"])
def test_bad_qk(op):
    fn = ops.attention_stats if op == "stats" else ops.attention_pattern
    kw = dict(tokens=torch.zeros(1, 6, dtype=torch.long)) if op == "stats" else {}
    q, k = _qk()
    with pytest.raises(ValueError, match="k must have shape"):
        fn(q, torch.randn(1, 2, 5, 8), **kw)
    with pytest.raises(ValueError, match="k must have shape"):
        fn(q, torch.randn(1, 2, 6, 7), **kw)
    with pytest.raises(ValueError, match="must divide"):
        fn(q, torch.randn(1, 3, 6, 8), **kw)
    with pytest.raises(ValueError, match="q must be 4-D"):
        fn(q[0], k, **kw)
    with pytest.raises(TypeError, match="q and k must share one dtype"):
        fn(q, k.double(), **kw)
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        fn(q.numpy(), k, **kw)
    with pytest.raises(ValueError, match="T = 0"):
        fn(torch.randn(1, 4, 0, 8), torch.randn(1, 2, 0, 8),
           **({"tokens": torch.zeros(1, 0, dtype=torch.long)} if op == "stats" else {}))
    with pytest.raises(TypeError, match="key_padding_mask must have dtype bool"):
        fn(q, k, key_padding_mask=torch.ones(1, 6), **kw)
    with pytest.raises(ValueError, match="key_padding_mask must have shape"):
        fn(q, k, key_padding_mask=torch.zeros(1, 5, dtype=torch.bool), **kw)
    with pytest.raises(ValueError, match="scale"):
        fn(q, k, scale=float("nan"), **kw)


def test_bad_stats_arguments():
    q, k = _qk()
    tok = torch.zeros(1, 6, dtype=torch.long)
    with pytest.raises(ValueError, match="tokens must have shape"):
        ops.attention_stats(q, k, torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="tokens must have shape"):
        ops.attention_stats(q, k, torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="tokens must have an integer dtype"):
        ops.attention_stats(q, k, torch.zeros(1, 6))
    with pytest.raises(ValueError, match="tokens .* are required"):
        ops.attention_stats(q, k, None, ("duplicate",))
    with pytest.raises(ValueError, match="need causal=True"):
        ops.attention_stats(q, k, tok, ("prev", "induction"), causal=False)
    with pytest.raises(ValueError, match="unknown rule"):
        ops.attention_stats(q, k, tok, ("previous",))
    with pytest.raises(ValueError, match="offset:<int>"):
        ops.attention_stats(q, k, tok, ("offset:x",))
    with pytest.raises(ValueError, match="must not repeat"):
        ops.attention_stats(q, k, tok, ("prev", "prev"))
    with pytest.raises(TypeError, match="causal must be a bool"):
        ops.attention_stats(q, k, tok, causal=1)


def test_bad_pattern_arguments():
    q, k = _qk()
    with pytest.raises(ValueError, match="heads: head 4 is out of range"):
        ops.attention_pattern(q, k, heads=[4])
    with pytest.raises(TypeError, match="heads must"):
        ops.attention_pattern(q, k, heads=[])
    with pytest.raises(ValueError, match="queries must be a contiguous range"):
        ops.attention_pattern(q, k, queries=slice(0, 6, 2))
    with pytest.raises(ValueError, match="queries selects no position"):
        ops.attention_pattern(q, k, queries=(4, 2))
    with pytest.raises(ValueError, match="top_m must be <= 6"):
        ops.attention_pattern(q, k, top_m=7)


def test_parse_rules():
    assert parse_rules(("prev", "first", "offset:-1"))[2].n == -1
    assert parse_rules("induction")[0].kind == "induction"
