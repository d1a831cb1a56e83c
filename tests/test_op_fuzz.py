"""Fuzz the index and shape checks of every op: random shapes (empty, mismatched, huge dims on
tiny tensors), strides (transposed, sliced, expanded), dtypes, k, indices (negative, past the
end, int64 extremes), thresholds, masks, tokens, rules and query ranges, on each backend that
runs here. Every call must either raise TypeError/ValueError or return what the reference
returns; no crash, no out-of-bounds access.

tools/sanitize.sh runs the cpu cases under AddressSanitizer + UBSan, where any out-of-bounds
read or write in the C++ kernels aborts the run. Seeds are fixed; PYINTERP_FUZZ_CASES sets the
number of cases per op (default 60).
"""
import os
import random

import pytest
import torch

from kernel_testing import require
from pyinterp import ops
from pyinterp.ops.multi_decode import clt_decoder_map

CASES = int(os.environ.get("PYINTERP_FUZZ_CASES", "60"))
BACKENDS = ["cpu", "triton", "cuda"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
BAD_INDICES = [-1, -(2**63), 2**63 - 1, 2**31, 2**31 - 1]


def _size(r: random.Random, hi: int = 9) -> int:
    return r.choice([0, 1, 1, 2, 3, 5, 8, hi, r.randint(1, hi)])


def _tensor(r: random.Random, shape, dtype=None, g=None):
    """A tensor of ``shape``, often a non-contiguous view (transposed, strided, expanded)."""
    dtype = dtype or r.choice(DTYPES)
    shape = tuple(shape)
    style = r.choice(["plain", "plain", "transposed", "strided", "expanded", "offset"])
    if style == "transposed" and len(shape) >= 2:
        t = torch.randn(*shape[:-2], shape[-1], shape[-2], generator=g).transpose(-1, -2)
    elif style == "strided" and len(shape) >= 1:
        t = torch.randn(*shape[:-1], shape[-1] * 2, generator=g)[..., ::2]
    elif style == "expanded" and len(shape) >= 2 and shape[0] > 0:
        t = torch.randn(1, *shape[1:], generator=g).expand(*shape)
    elif style == "offset":
        n = 1
        for s in shape:
            n *= s
        t = torch.randn(n + 3, generator=g)[3:].view(shape)
    else:
        t = torch.randn(*shape, generator=g)
    return t.to(dtype)


def _maybe(r, p=0.15):
    return r.random() < p


def _indices(r, shape, d_sae, g):
    idx = torch.randint(0, max(d_sae, 1), shape, generator=g)
    if _maybe(r, 0.4) and idx.numel():
        idx.view(-1)[r.randrange(idx.numel())] = r.choice(BAD_INDICES + [d_sae, d_sae + 1])
    if _maybe(r, 0.1):
        idx = idx.to(torch.int32) if not idx.numel() or idx.abs().max() < 2**31 else idx
    if _maybe(r, 0.05):
        idx = idx.float()
    if _maybe(r, 0.2) and idx.dim() == 2:
        idx = idx.t().contiguous().t() if idx.shape[0] == idx.shape[1] else idx
    return idx


# ------------------------------------------------------------------ one random call per op
# Each builder draws everything up front and returns ``call(backend)``, the same call for
# every backend.
def _sae_encoder_case(r, g, kind):
    n, d_in, d_sae = _size(r), _size(r) or 1, _size(r, 40) or 1
    if _maybe(r):
        d_in = 0
    dt = r.choice(DTYPES)
    x = _tensor(r, (n, d_in + (1 if _maybe(r) else 0)), dt, g)
    W = _tensor(r, (d_in, d_sae) if not _maybe(r) else (d_sae, d_in), dt if not _maybe(r)
                else r.choice(DTYPES), g)
    b = _tensor(r, (d_sae + (1 if _maybe(r) else 0),), dt, g)
    bd = None if _maybe(r, 0.3) else _tensor(r, (d_in,), dt, g)
    if kind == "threshold":
        thr = r.choice([0.0, -1.0, float("nan"), _tensor(r, (d_sae,), torch.float32, g),
                        _tensor(r, (d_sae + 1,), torch.float32, g)])
        kw = {"max_active": r.choice([None, None, 0, 1, d_sae, d_sae + 5, -1])}
        return lambda backend: ops.threshold_encode(x, W, b, bd, thr, backend=backend, **kw)
    k = r.choice([1, 2, d_sae, d_sae + 1, 0, -1, r.randint(1, max(d_sae, 1)), True, 2.0])
    fn = ops.topk_encode if kind == "topk" else ops.batchtopk_encode
    return lambda backend: fn(x, W, b, bd, k, backend=backend)


def _decode_case(r, g):
    n, k, d_sae, d_in = _size(r), _size(r), _size(r, 40) or 1, _size(r) or 1
    dt = r.choice(DTYPES)
    v = _tensor(r, (n, k), dt, g)
    i = _indices(r, (n, k + (1 if _maybe(r, 0.1) else 0)), d_sae, g)
    W = _tensor(r, (d_sae, d_in), dt if not _maybe(r, 0.1) else torch.float64, g)
    b = None if _maybe(r, 0.3) else _tensor(r, (d_in + (1 if _maybe(r, 0.1) else 0),), dt, g)
    det = r.choice([False, True])
    grad = _maybe(r, 0.4) and dt in (torch.float32, torch.float64)

    def call(backend):
        vv = v.clone().requires_grad_(grad) if grad else v
        WW = W.clone().requires_grad_(grad) if grad and W.dtype == dt else W
        out = ops.sparse_decode(vv, i, WW, b, deterministic=det, backend=backend)
        if grad and out.numel():
            gv, = torch.autograd.grad(out.float().sum(), [vv], allow_unused=True)
            return out, gv
        return out
    return call


def _multi_decode_case(r, g):
    n, k, d_src, d_out = _size(r), _size(r), _size(r, 20) or 1, _size(r) or 1
    L = r.choice([1, 2, 3])
    dt = r.choice(DTYPES)
    kind = r.choice(["stack", "clt", "matryoshka"])
    if kind == "clt":
        dmap, P, S, G = clt_decoder_map(L), L * (L + 1) // 2, L, L
    elif kind == "matryoshka":
        dmap, P, S, G = [[0] * L], 1, 1, L
    else:
        dmap, P, S, G = None, L, 1, L
    if _maybe(r, 0.1) and dmap is not None:
        dmap = [row[:-1] + [P] for row in dmap]  # a decoder index past the stack
    ranges = None
    if _maybe(r, 0.5):
        tot = S * d_src
        ranges = [(r.randint(0, tot), r.randint(0, tot + (1 if _maybe(r, 0.1) else 0)))
                  for _ in range(G + (1 if _maybe(r, 0.05) else 0))]
    v = _tensor(r, (n, k), dt, g)
    i = _indices(r, (n, k + (1 if _maybe(r, 0.1) else 0)), S * d_src, g)
    W = _tensor(r, (P, d_src, d_out), dt if not _maybe(r, 0.1) else torch.float64, g)
    b = None if _maybe(r, 0.3) else _tensor(r, (G, d_out + (1 if _maybe(r, 0.1) else 0)), dt, g)
    det = r.choice([False, True])
    grad = _maybe(r, 0.4) and dt in (torch.float32, torch.float64)

    def call(backend):
        vv = v.clone().requires_grad_(grad) if grad else v
        WW = W.clone().requires_grad_(grad) if grad and W.dtype == dt else W
        out = ops.multi_decode(vv, i, WW, b, decoder_map=dmap, ranges=ranges, deterministic=det,
                               backend=backend)
        if grad and out.numel():
            return (out,) + torch.autograd.grad(out.float().sum(), [vv, WW], allow_unused=True)
        return out
    return call


def _band_case(r, g):
    n, d_in, d_sae = _size(r), _size(r) or 1, _size(r, 40) or 1
    dt = r.choice(DTYPES)
    x = _tensor(r, (n, d_in + (1 if _maybe(r) else 0)), dt, g)
    W = _tensor(r, (d_in, d_sae), dt, g)
    b = _tensor(r, (d_sae,), dt, g)
    bd = None if _maybe(r, 0.3) else _tensor(r, (d_in,), dt, g)
    thr = _tensor(r, (d_sae + (1 if _maybe(r) else 0),), torch.float32, g).abs()
    eps = r.choice([0.1, 0.5, 0.0, -1.0, 2.0])
    kw = {"max_active": r.choice([None, None, 0, 1, d_sae + 5])}
    return lambda backend: ops.jumprelu_select(x, W, b, bd, thr, eps, backend=backend, **kw)


def _bookkeeping_case(r, g):
    d_sae = _size(r, 40) or 1
    v = _tensor(r, (_size(r), _size(r)), torch.float32, g)
    i = _indices(r, v.shape, d_sae, g)
    which = r.choice(["dense", "counts", "activity"])
    if which == "dense":
        width = r.choice([d_sae, 0, d_sae - 1])
        return lambda backend: ops.dense_from_sparse(v, i, width)
    if which == "counts":
        from pyinterp.ops.sae import activation_counts

        return lambda backend: activation_counts(v, i, d_sae)
    counter = torch.zeros(r.choice([d_sae, d_sae + 1]), dtype=torch.int64)
    return lambda backend: ops.update_activity(counter.clone(), i, d_sae, values=v)


def _solu_case(r, g):
    shape = [_size(r) for _ in range(r.randint(1, 3))]
    dt = r.choice(DTYPES)
    x = _tensor(r, shape, dt, g)
    d = shape[-1]
    w = None if _maybe(r, 0.3) else _tensor(r, (d + (1 if _maybe(r) else 0),), dt, g)
    b = None if _maybe(r, 0.3) else _tensor(r, (d,), dt if not _maybe(r) else torch.float64, g)
    pre = r.choice([False, True])
    if _maybe(r, 0.3):
        return lambda backend: ops.solu(x, backend=backend)
    return lambda backend: ops.solu_ln(x, w, b, return_pre_ln=pre, backend=backend)


def _attention_case(r, g, pattern):
    B, T, d = _size(r, 4), _size(r, 70), _size(r) or 1
    Hkv = r.choice([1, 2])
    H = Hkv * r.choice([1, 2]) + (1 if _maybe(r, 0.1) else 0)
    dt = r.choice(DTYPES)
    q = _tensor(r, (B, H, T, d), dt, g)
    k = _tensor(r, (B, Hkv, T + (1 if _maybe(r, 0.1) else 0), d), dt, g)
    causal = r.choice([True, False])
    kpm = None if _maybe(r, 0.5) else (torch.rand(B, T + (1 if _maybe(r, 0.1) else 0),
                                                  generator=g) < 0.3)
    if pattern:
        heads = r.choice([None, 0, [0], [H - 1], [H], [-1], list(range(H))])
        lo = r.randint(-2, T + 2)
        queries = r.choice([None, slice(0, T), (lo, lo + r.randint(-1, 4)), range(0, T + 3),
                            slice(0, T, 2)])
        top_m = r.choice([None, None, 1, T, 0, -1])
        return lambda backend: ops.attention_pattern(q, k, heads=heads, queries=queries,
                                                     causal=causal, key_padding_mask=kpm,
                                                     top_m=top_m, backend=backend)
    tok = None if _maybe(r, 0.2) else torch.randint(-5, 2**40, (B, T + (1 if _maybe(r, 0.1)
                                                                        else 0)), generator=g)
    rules = r.choice([("prev",), ("prev", "first"), ("duplicate", "induction"), ("offset:3",),
                      ("offset:-1",), (f"offset:{T + 5}",), ("nope",), ()])
    scale = r.choice([None, 0.5, 0.0, float("inf")])
    return lambda backend: ops.attention_stats(q, k, tok, rules=rules, causal=causal,
                                               key_padding_mask=kpm, scale=scale, backend=backend)


def _persona_case(r, g):
    L, B, T, D, P = _size(r, 3) or 1, _size(r, 3), _size(r), _size(r) or 1, _size(r, 4) or 1
    dt = r.choice(DTYPES)
    hidden = _tensor(r, (L, B, T, D), dt, g)
    if _maybe(r, 0.2):
        hidden = list(hidden.unbind(0))
    vec = _tensor(r, r.choice([(P, D), (L, P, D), (P, D + 1), (L + 1, P, D)]), dt, g)
    mask = None if _maybe(r, 0.3) else r.choice([
        torch.rand(B, T, generator=g) < 0.5, torch.rand(B, T, generator=g),
        torch.ones(B, T + 1, dtype=torch.bool)])
    reduce = r.choice(["mean", "sum", "last", "none", "max"])
    normalize = r.choice([True, False])
    if _maybe(r, 0.25):
        return lambda backend: ops.persona_pool(hidden, mask, reduce=reduce, backend=backend)
    return lambda backend: ops.persona_project(hidden, vec, mask, reduce=reduce,
                                               normalize=normalize, backend=backend)


OPS = {
    "topk_encode": lambda r, g: _sae_encoder_case(r, g, "topk"),
    "batchtopk_encode": lambda r, g: _sae_encoder_case(r, g, "batchtopk"),
    "threshold_encode": lambda r, g: _sae_encoder_case(r, g, "threshold"),
    "sparse_decode": _decode_case,
    "multi_decode": _multi_decode_case,
    "jumprelu_select": _band_case,
    "sparse bookkeeping": _bookkeeping_case,
    "solu": _solu_case,
    "attention_stats": lambda r, g: _attention_case(r, g, False),
    "attention_pattern": lambda r, g: _attention_case(r, g, True),
    "persona": _persona_case,
}


def _flat(out):
    if isinstance(out, torch.Tensor):
        return [out]
    if hasattr(out, "lse"):
        return [out.lse, out.entropy] + [out.mass[k] for k in sorted(out.mass)]
    return [t for o in out for t in _flat(o)] if isinstance(out, (tuple, list)) else []


def _run(call, backend):
    try:
        return "ok", call(backend)
    except (TypeError, ValueError) as exc:
        return type(exc).__name__, str(exc)


def _build(op, case, device):
    """Case ``case`` of ``op`` with its tensors on ``device`` (a GPU backend on a GPU machine
    runs CUDA tensors; the builders draw on CPU, so the captured tensors are moved)."""
    call = OPS[op](random.Random(f"{op}/{case}"), torch.Generator().manual_seed(case))
    if device.type == "cpu":
        return call
    for cell in call.__closure__ or ():
        v = cell.cell_contents
        if isinstance(v, torch.Tensor):
            cell.cell_contents = v.to(device)
        elif isinstance(v, list) and v and all(isinstance(t, torch.Tensor) for t in v):
            cell.cell_contents = [t.to(device) for t in v]
    return call


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", list(OPS))
def test_fuzz_checks_then_agreement(op, backend):
    device = require(backend)
    n = CASES if backend != "triton" else max(12, CASES // 3)  # the interpreter is slow
    seen = {"ok": 0, "rejected": 0}
    for case in range(n):
        # first the backend: under ASan a missing check aborts right here
        kind, got = _run(_build(op, case, device), backend)
        ref_kind, ref = _run(_build(op, case, torch.device("cpu")), "reference")
        where = f"{op} case {case} on {backend}"
        # the checks sit in front of the dispatch: a rejected call is rejected everywhere
        assert kind == ref_kind, f"{where}: reference {ref_kind} ({ref}) vs {kind} ({got})"
        if kind != "ok":
            seen["rejected"] += 1
            continue
        seen["ok"] += 1
        a, b = _flat(got), _flat(ref)
        assert len(a) == len(b), where
        for x, y in zip(a, b):
            if x is None or y is None:
                assert x is y, where
                continue
            assert x.shape == y.shape and x.dtype == y.dtype, where
            if x.dtype in (torch.int64, torch.int32, torch.bool):
                continue  # indices may differ only among ties of the float path; values checked
            tol = {torch.float16: 2e-2, torch.bfloat16: 1e-1}.get(x.dtype, 2e-3)
            torch.testing.assert_close(x.detach().double().cpu(), y.detach().double(),
                                       atol=tol * 10, rtol=tol, equal_nan=True, msg=where)
    assert seen["ok"] and seen["rejected"], seen  # the fuzz reaches both sides of the checks
