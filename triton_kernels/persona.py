"""Persona projection kernels in Triton (launchers: ``pyinterp/backends/triton/persona.py``).

Layers are read in place: a device table of L data pointers (int64, cast back to typed pointers
in the kernel) and a table of L x 3 element strides, so a list of non-contiguous views of a
model's residual stream costs one launch and no copy.

- ``_pool_kernel``: one program per (layer x row, D block, token split) walks its tokens in
  BLOCK_T tiles and accumulates sum_t w[b, t] h[l, b, t, d_block] in float32 (float64 for
  float64). Zero-weight tokens are masked out of the load, so padding costs no DRAM traffic.
  When (L*B x D blocks) would not fill the GPU, the tokens are split and partial rows summed.
- ``_gather_kernel``: h[l, b, index[b]] ("last"), NaN where index < 0.
- ``_tokens_kernel``: proj[l, b, t, p] = h[l, b, t] . w[l, p] for tiles of BLOCK_T tokens x
  BLOCK_P directions, reducing over D in BLOCK_D chunks: a broadcast multiply-sum for P < 16, an
  fp32 ("ieee", never TF32: it would cost float32 accuracy) tl.dot from BLOCK_P = 16.
"""
import triton
import triton.language as tl


@triton.jit
def _layer_row(TABLE, STRIDES, lb, B, DT: tl.constexpr):
    """Program lb = l * B + b: layer l, row b, a typed pointer to h[l, b, 0, 0] and the layer's
    token and feature element strides."""
    l = lb // B
    b = lb % B
    base = tl.load(TABLE + l).to(tl.pointer_type(DT))
    sb = tl.load(STRIDES + 3 * l)
    st = tl.load(STRIDES + 3 * l + 1)
    sd = tl.load(STRIDES + 3 * l + 2)
    return l, b, base + b * sb, st, sd


@triton.jit
def _pool_kernel(TABLE, STRIDES, W, OUT, L, B, T, D, per_split,
                 DT: tl.constexpr, ACC_F64: tl.constexpr,
                 BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    acc_t = tl.float64 if ACC_F64 else tl.float32
    lb = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    split = tl.program_id(2)
    l, b, hrow, st, sd = _layer_row(TABLE, STRIDES, lb, B, DT)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    row = hrow + offs_d.to(tl.int64)[None, :] * sd
    t_lo = split * per_split
    t_hi = tl.minimum(T, t_lo + per_split)
    acc = tl.zeros([BLOCK_D], dtype=acc_t)
    for t0 in range(t_lo, t_hi, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        t_ok = offs_t < t_hi
        w = tl.load(W + b * T + offs_t, mask=t_ok, other=0.0)
        sel = t_ok & (w != 0)  # NaN weights stay selected (a row that selects nothing)
        x = tl.load(row + offs_t.to(tl.int64)[:, None] * st, mask=sel[:, None] & d_ok[None, :],
                    other=0.0).to(acc_t)
        acc += tl.sum(x * w[:, None], axis=0)
    tl.store(OUT + ((split * L + l) * B + b) * D + offs_d, acc, mask=d_ok)


@triton.jit
def _gather_kernel(TABLE, STRIDES, INDEX, OUT, B, D,
                   DT: tl.constexpr, ACC_F64: tl.constexpr, BLOCK_D: tl.constexpr):
    acc_t = tl.float64 if ACC_F64 else tl.float32
    lb = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    _, b, hrow, st, sd = _layer_row(TABLE, STRIDES, lb, B, DT)
    t = tl.load(INDEX + b)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    # index < 0 (the row selects nothing): read token 0 (in bounds) and overwrite with NaN
    x = tl.load(hrow + tl.maximum(t, 0) * st + offs_d.to(tl.int64) * sd, mask=d_ok,
                other=0.0).to(acc_t)
    x = tl.where(t >= 0, x, float("nan"))
    tl.store(OUT + lb * D + offs_d, x, mask=d_ok)


@triton.jit
def _tokens_kernel(TABLE, STRIDES, WV, OUT, w_lstride, B, T, D, P,
                   DT: tl.constexpr, ACC_F64: tl.constexpr,
                   BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr):
    acc_t = tl.float64 if ACC_F64 else tl.float32
    lb = tl.program_id(0).to(tl.int64)
    pid_t = tl.program_id(1)
    pid_p = tl.program_id(2)
    l, _, hrow, st, sd = _layer_row(TABLE, STRIDES, lb, B, DT)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_ok = offs_t < T
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = offs_p < P
    rows = hrow + offs_t.to(tl.int64)[:, None] * st
    wl = WV + l * w_lstride
    acc = tl.zeros([BLOCK_T, BLOCK_P], dtype=acc_t)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        x = tl.load(rows + offs_d.to(tl.int64)[None, :] * sd, mask=t_ok[:, None] & d_ok[None, :],
                    other=0.0).to(acc_t)  # (BLOCK_T, BLOCK_D)
        w = tl.load(wl + offs_p[None, :] * D + offs_d[:, None], mask=d_ok[:, None] & p_ok[None, :],
                    other=0.0)  # (BLOCK_D, BLOCK_P)
        if BLOCK_P >= 16 and not ACC_F64:
            # Say "ieee" explicitly: triton 3.6 rewrites the broadcast multiply-sum below into a
            # dot with the default (TF32) precision once every dim is >= 16.
            acc = tl.dot(x, w, acc, input_precision="ieee")
        else:
            acc += tl.sum(x[:, :, None] * w[None, :, :], axis=1)
    out = OUT + ((lb * T + offs_t)[:, None]) * P + offs_p[None, :]
    tl.store(out, acc, mask=t_ok[:, None] & p_ok[None, :])

