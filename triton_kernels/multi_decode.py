"""Triton kernels of the multi-output sparse decode (family ``multi_decode``; launchers in
``pyinterp/backends/triton/multi_decode.py``, contract in pyinterp/ops/multi_decode/function.py).

An entry (latent i = IDX[n, j], coefficient COEF[n, j]) reaches output g when
p = DMAP[(i // d_src) * G + g] >= 0 and LO[g] <= i < HI[g]; it then reads decoder row
W[p, i % d_src, :]. Entries that do not reach an output contribute nothing (their coefficient
is zeroed before the product, so a NaN coefficient stays out too).

- ``_md_gather_kernel``: one program per (row n, output g, d-block): out[g, n] = bias[g] +
  sum of the reached entries' coef * row.
- ``_md_gather_dot_kernel``: grad values: one program per (row, block of entries), looping
  over outputs and d-blocks.
- ``_md_scatter_atomic_kernel``: grad W with float atomics, one program per (row, d-block).
- ``_md_scatter_segment_kernel``: grad W without atomics: one program per (latent, d-block)
  sums the latent's entries (grouped by latent, stable) output by output, adding outputs that
  share a decoder into its row; the rows of a latent are its own, so there is no race.
"""
from __future__ import annotations

import triton
import triton.language as tl

from .sae import _row_entries


@triton.jit
def _reach(lat, g, DMAP, LO, HI, G, d_src, n_src, valid):
    """Decoder index of latent ``lat`` for output ``g`` (-1 where it does not reach g)."""
    lo = tl.load(LO + g)
    hi = tl.load(HI + g)
    src = lat // d_src
    ok = valid & (lat >= lo) & (lat < hi) & (src < n_src)
    p = tl.load(DMAP + src * G + g, mask=ok, other=-1)
    return tl.where(ok, p, -1)


@triton.jit
def _md_gather_kernel(COEF, IDX, W, BIAS, OUT, DMAP, LO, HI, N, K, D, G, d_src, n_src,
                      HAS_BIAS: tl.constexpr, ACC_F64: tl.constexpr, BLOCK_J: tl.constexpr,
                      BLOCK_D: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1).to(tl.int64)
    ds = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = ds < D
    acc_t = tl.float64 if ACC_F64 else tl.float32
    acc = tl.zeros((BLOCK_D,), dtype=acc_t)
    for j0 in range(0, K, BLOCK_J):
        c, lat, jm = _row_entries(COEF, IDX, n, K, j0, BLOCK_J, ACC_F64)
        p = _reach(lat, g, DMAP, LO, HI, G, d_src, n_src, jm)
        hit = p >= 0
        c = tl.where(hit, c, 0.0)
        row = (p * d_src + lat % d_src).to(tl.int64)
        w = tl.load(W + row[:, None] * D + ds[None, :].to(tl.int64),
                    mask=hit[:, None] & dmask[None, :], other=0.0).to(acc_t)
        acc += tl.sum(c[:, None] * w, axis=0)
    if HAS_BIAS:
        acc += tl.load(BIAS + g * D + ds, mask=dmask, other=0.0).to(acc_t)
    tl.store(OUT + (g * N + n) * D + ds, acc.to(OUT.dtype.element_ty), mask=dmask)


@triton.jit
def _md_gather_dot_kernel(GOUT, IDX, W, OUT, DMAP, LO, HI, N, K, D, G, d_src, n_src,
                          ACC_F64: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    js = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
    jm = js < K
    acc_t = tl.float64 if ACC_F64 else tl.float32
    lat = tl.load(IDX + n * K + js, mask=jm, other=0)
    acc = tl.zeros((BLOCK_J,), dtype=acc_t)
    for g in range(0, G):
        p = _reach(lat, g, DMAP, LO, HI, G, d_src, n_src, jm)
        hit = p >= 0
        row = (p * d_src + lat % d_src).to(tl.int64)
        for d0 in range(0, D, BLOCK_D):
            ds = d0 + tl.arange(0, BLOCK_D)
            dmask = ds < D
            gr = tl.load(GOUT + (g * N + n) * D + ds, mask=dmask, other=0.0).to(acc_t)
            w = tl.load(W + row[:, None] * D + ds[None, :].to(tl.int64),
                        mask=hit[:, None] & dmask[None, :], other=0.0).to(acc_t)
            acc += tl.sum(w * gr[None, :], axis=1)
    tl.store(OUT + n * K + js, acc.to(OUT.dtype.element_ty), mask=jm)


@triton.jit
def _md_scatter_atomic_kernel(COEF, IDX, X, OUT, DMAP, LO, HI, N, K, D, G, d_src, n_src,
                              BLOCK_D: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = ds < D
    for j in range(0, K):
        lat = tl.load(IDX + n * K + j)
        c = tl.load(COEF + n * K + j)
        for g in range(0, G):
            p = _reach(lat, g, DMAP, LO, HI, G, d_src, n_src, True)
            if p >= 0:
                x = tl.load(X + (g * N + n) * D + ds, mask=dmask, other=0.0)
                row = (p * d_src + lat % d_src).to(tl.int64)
                tl.atomic_add(OUT + row * D + ds, c * x, mask=dmask)


@triton.jit
def _md_scatter_segment_kernel(COEF, ORDER, OFFSETS, X, OUT, DMAP, LO, HI, N, K, D, G, d_src,
                               n_src, BLOCK_D: tl.constexpr):
    """OUT: the accumulation-dtype grad W, zero-filled; each program owns latent ``lat``."""
    lat = tl.program_id(0).to(tl.int64)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = ds < D
    start = tl.load(OFFSETS + lat)
    end = tl.load(OFFSETS + lat + 1)
    if end > start:
        for g in range(0, G):
            p = _reach(lat, g, DMAP, LO, HI, G, d_src, n_src, True)
            if p >= 0:
                row = (p * d_src + lat % d_src).to(tl.int64)
                acc = tl.load(OUT + row * D + ds, mask=dmask, other=0.0)
                for q in range(start, end):
                    e = tl.load(ORDER + q)
                    c = tl.load(COEF + e)
                    x = tl.load(X + (g * N + e // K) * D + ds, mask=dmask, other=0.0)
                    acc += c * x
                tl.store(OUT + row * D + ds, acc, mask=dmask)
