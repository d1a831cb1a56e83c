"""Triton kernels of the sparse SAE ops (family ``sae``).

- ``topk_encode``: the top-k is fused into the GEMM epilogue. Each program owns BLOCK_M rows
  and a range of columns; it computes (BLOCK_M, BLOCK_N) pre-activation tiles with ``tl.dot``,
  packs each value with its column into one order-preserving int64 key (value desc, then
  column asc: the tie rule), takes the tile's top-KP with ``tl.topk`` and merges it into a
  running top-KP held in registers. Only (N, splits, KP) keys reach memory; a merge kernel
  reduces the splits and a finalize kernel unpacks values/indices. The (N, d_sae)
  pre-activation is never written. Centring uses (x - b_dec) @ W = x @ W - b_dec @ W, so the
  dot reads x and W_enc in their own dtype (tensor cores for bf16/fp16) and b_dec folds into
  the bias once per call.
- ``sparse_decode``: a gather kernel (k rows of W_dec per output row).
- backward: gathered dot products for grad values, a gather over W_enc's columns for grad x,
  and the scatter of rows by latent for grad W_dec / W_enc / b_enc: float atomics by default,
  or (``deterministic=True`` or ``torch.use_deterministic_algorithms``) a sort-based segment
  sum where each latent sums its entries in a fixed order.

Not fused (documented in docs/decisions/sae-gpu-coverage.md): k above the launcher's MAX_FUSED_K, float64,
and the data-dependent-width encoders (threshold/JumpReLU, BatchTopK) select with torch over
row chunks of the pre-activation (pyinterp.backends.sae_select); their backward uses the
kernels here. Launchers (grids, block sizes, the split/merge loop): pyinterp/backends/triton/sae.py.
"""
import triton
import triton.language as tl

# ----------------------------------------------------------------------------------------
# key packing: int64 key = (order-preserving int32 of the float32 value) << 32 | (2^32-1 - col)


@triton.jit
def _pack(v, cols):
    v = v + 0.0  # -0.0 -> +0.0 so that it ties with +0.0 like the reference
    b = v.to(tl.int32, bitcast=True)
    k32 = tl.where(b >= 0, b, b ^ 0x7FFFFFFF)
    k32 = tl.where(v != v, 0x7FFFFFFF, k32)  # any NaN above +inf (docs/decisions/nan-semantics.md)
    return (k32.to(tl.int64) << 32) | (4294967295 - cols.to(tl.int64))


@triton.jit
def _unpack(key):
    k32 = (key >> 32).to(tl.int32)
    b = tl.where(k32 >= 0, k32, k32 ^ 0x7FFFFFFF)
    v = b.to(tl.float32, bitcast=True)
    col = 4294967295 - (key & 4294967295)
    return v, col


@triton.jit
def _topk_partial_kernel(X, W, BIAS, CAND, N, D_IN, D_SAE, cols_per_split, n_splits,
                         stride_xn, stride_wi, stride_wl, min_key,
                         KP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_K: tl.constexpr, CAST_F32: tl.constexpr, IEEE: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < N
    rows64 = rows.to(tl.int64)
    best = tl.full((BLOCK_M, KP), min_key, tl.int64)
    c_start = pid_s * cols_per_split
    c_end = tl.minimum(c_start + cols_per_split, D_SAE)
    for c0 in range(c_start, c_end, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        cmask = cols < c_end
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, D_IN, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < D_IN
            a = tl.load(X + rows64[:, None] * stride_xn + ks[None, :],
                        mask=rmask[:, None] & kmask[None, :], other=0.0)
            b = tl.load(W + ks[:, None].to(tl.int64) * stride_wi + cols[None, :].to(tl.int64) * stride_wl,
                        mask=kmask[:, None] & cmask[None, :], other=0.0)
            if CAST_F32:  # the interpreter's bf16/fp16 dot is wrong: compute in fp32 there
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            if IEEE:
                acc = tl.dot(a, b, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
        acc += tl.load(BIAS + cols, mask=cmask, other=0.0)[None, :]
        keys = _pack(acc, cols)
        keys = tl.where(cmask[None, :], keys, min_key)
        tile_top = tl.topk(keys, KP)
        both = tl.reshape(tl.join(best, tile_top), (BLOCK_M, 2 * KP))
        best = tl.topk(both, KP)
    slot = tl.arange(0, KP)
    tl.store(CAND + (rows64[:, None] * n_splits + pid_s) * KP + slot[None, :], best,
             mask=rmask[:, None])


@triton.jit
def _topk_merge_kernel(CAND, OUT, n_in, n_out, min_key, KP: tl.constexpr, G: tl.constexpr):
    row = tl.program_id(0)
    grp = tl.program_id(1)
    offs = tl.arange(0, G * KP)
    src = grp * G * KP + offs
    keys = tl.load(CAND + row.to(tl.int64) * n_in * KP + src, mask=src < n_in * KP, other=min_key)
    if KP == 1:  # tl.topk of 1-D keys with k = 1 does not compile under triton 3.6
        tl.store(OUT + row.to(tl.int64) * n_out + grp, tl.max(keys, 0))
    else:
        top = tl.topk(keys, KP)
        tl.store(OUT + (row.to(tl.int64) * n_out + grp) * KP + tl.arange(0, KP), top)


@triton.jit
def _topk_finalize_kernel(CAND, VALS, IDX, N, k, KP: tl.constexpr, BLOCK_M: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    slot = tl.arange(0, KP)
    m = (rows[:, None] < N) & (slot[None, :] < k)
    keys = tl.load(CAND + rows[:, None] * KP + slot[None, :], mask=m, other=0)
    v, col = _unpack(keys)
    v = tl.where(v != v, v, tl.maximum(v, 0.0))  # ReLU; NaN propagates
    tl.store(VALS + rows[:, None] * k + slot[None, :], v.to(VALS.dtype.element_ty), mask=m)
    tl.store(IDX + rows[:, None] * k + slot[None, :], col, mask=m)


# ----------------------------------------------------------------------------------------
# gather / scatter kernels (W addressed by strides: W_dec (d_sae, d) or W_enc (d, d_sae))


@triton.jit
def _row_entries(COEF, IDX, n, K, j0, BLOCK_J: tl.constexpr, ACC_F64: tl.constexpr):
    """Entries j0 .. j0 + BLOCK_J of row n: coefficients (accumulation dtype), latents, mask."""
    js = j0 + tl.arange(0, BLOCK_J)
    jm = js < K
    c = tl.load(COEF + n * K + js, mask=jm, other=0.0).to(tl.float64 if ACC_F64 else tl.float32)
    lat = tl.load(IDX + n * K + js, mask=jm, other=0)
    return c, lat, jm


@triton.jit
def _gather_kernel(COEF, IDX, W, BIAS, OUT, K, D, stride_wl, stride_wd, HAS_BIAS: tl.constexpr,
                   ACC_F64: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = ds < D
    acc_t = tl.float64 if ACC_F64 else tl.float32
    acc = tl.zeros((BLOCK_D,), dtype=acc_t)
    for j0 in range(0, K, BLOCK_J):
        c, lat, jm = _row_entries(COEF, IDX, n, K, j0, BLOCK_J, ACC_F64)
        w = tl.load(W + lat[:, None] * stride_wl + ds[None, :].to(tl.int64) * stride_wd,
                    mask=jm[:, None] & dmask[None, :], other=0.0).to(acc_t)
        acc += tl.sum(c[:, None] * w, axis=0)
    if HAS_BIAS:
        acc += tl.load(BIAS + ds, mask=dmask, other=0.0).to(acc_t)
    tl.store(OUT + n * D + ds, acc.to(OUT.dtype.element_ty), mask=dmask)


@triton.jit
def _gather_dot_kernel(G, IDX, W, OUT, K, D, stride_wl, stride_wd, ACC_F64: tl.constexpr,
                       BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    js = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
    jm = js < K
    acc_t = tl.float64 if ACC_F64 else tl.float32
    lat = tl.load(IDX + n * K + js, mask=jm, other=0)
    acc = tl.zeros((BLOCK_J,), dtype=acc_t)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        dmask = ds < D
        g = tl.load(G + n * D + ds, mask=dmask, other=0.0).to(acc_t)
        w = tl.load(W + lat[:, None] * stride_wl + ds[None, :].to(tl.int64) * stride_wd,
                    mask=jm[:, None] & dmask[None, :], other=0.0).to(acc_t)
        acc += tl.sum(w * g[None, :], axis=1)
    tl.store(OUT + n * K + js, acc.to(OUT.dtype.element_ty), mask=jm)


@triton.jit
def _scatter_atomic_kernel(COEF, IDX, X, OUT, COLSUM, K, D, stride_ol, stride_od,
                           HAS_COLSUM: tl.constexpr, BLOCK_D: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    ds = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = ds < D
    x = tl.load(X + n * D + ds, mask=dmask, other=0.0)
    for j in range(0, K):
        c = tl.load(COEF + n * K + j)
        lat = tl.load(IDX + n * K + j)
        tl.atomic_add(OUT + lat * stride_ol + ds.to(tl.int64) * stride_od, c * x, mask=dmask)
        if HAS_COLSUM:
            if pid_d == 0:
                tl.atomic_add(COLSUM + lat, c)


@triton.jit
def _scatter_segment_kernel(COEF, ORDER, OFFSETS, X, OUT, COLSUM, K, D, stride_ol, stride_od,
                            HAS_COLSUM: tl.constexpr, ACC_F64: tl.constexpr,
                            BLOCK_D: tl.constexpr):
    lat = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    ds = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = ds < D
    acc_t = tl.float64 if ACC_F64 else tl.float32
    start = tl.load(OFFSETS + lat)
    end = tl.load(OFFSETS + lat + 1)
    acc = tl.zeros((BLOCK_D,), dtype=acc_t)
    cs = tl.zeros((1,), dtype=acc_t)
    for p in range(start, end):
        e = tl.load(ORDER + p)
        c = tl.load(COEF + e).to(acc_t)
        x = tl.load(X + (e // K) * D + ds, mask=dmask, other=0.0).to(acc_t)
        acc += c * x
        cs += c
    tl.store(OUT + lat * stride_ol + ds.to(tl.int64) * stride_od, acc.to(OUT.dtype.element_ty), mask=dmask)
    if HAS_COLSUM:
        if pid_d == 0:
            tl.store(COLSUM + lat + tl.arange(0, 1), cs.to(COLSUM.dtype.element_ty))
