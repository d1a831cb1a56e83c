"""SoLU Triton kernels: ``solu(x) = x * softmax(x)`` and the fused ``solu_ln = LN(solu(x))``.

One program per row (x viewed as (rows, d), contiguous). A row that fits in one block
(``d <= MAX_BLOCK`` of the launcher) is loaded once and kept in registers; a longer row takes the
multi-block path: an online-softmax sweep for (max, sum exp), a sweep for the LayerNorm
moments (Chan's parallel merge of per-block mean/M2), and a sweep that writes the output.

Saved for backward: x and per-row statistics only, (lse,) for solu and (lse, mean, rstd)
for solu_ln; backward recomputes p = exp(x - lse) and the pre-LN row. Weight/bias gradients
come from per-program partial sums (a persistent grid), summed by torch: no atomics.

Launch configuration (BLOCK, SINGLE, grids) is chosen by the launchers in
``pyinterp/backends/triton/solu.py``; this file holds the kernels only.
"""
import triton
import triton.language as tl


@triton.jit
def _online_lse(x_ptr, n_cols, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """log-sum-exp of a long row in one sweep (running max, rescaled running sum)."""
    cols = tl.arange(0, BLOCK)
    m = tl.full((), float("-inf"), ACC)
    s = tl.zeros((), ACC)
    for start in range(0, n_cols, BLOCK):
        c = start + cols
        mask = c < n_cols
        x = tl.load(x_ptr + c, mask=mask, other=float("-inf")).to(ACC)
        m_new = tl.maximum(m, tl.max(x, 0))
        # While every value so far is -inf, shift by 0 so exp(-inf - shift) = 0, not NaN.
        shift = tl.where(m_new == float("-inf"), 0.0, m_new).to(ACC)
        e = tl.where(mask, tl.exp(x - shift), 0.0).to(ACC)
        s = s * tl.exp(m - shift) + tl.sum(e, 0)
        m = m_new
    # An all -inf row gives -inf + log(0) = -inf: then exp(x - lse) is NaN, as in torch.
    return m + tl.log(s)


@triton.jit
def _block_exp(x_ptr, n_cols, BLOCK: tl.constexpr, ACC: tl.constexpr):
    """A row that fits in one block: x (-inf past the row), its max m, e = exp(x - m) (0 past
    the row) and s = sum(e)."""
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + cols, mask=mask, other=float("-inf")).to(ACC)
    m = tl.max(x, 0)
    e = tl.where(mask, tl.exp(x - m), 0.0).to(ACC)
    return x, m, e, tl.sum(e, 0)


@triton.jit
def _solu_fwd_kernel(X, Y, LSE, n_cols, BLOCK: tl.constexpr, SINGLE: tl.constexpr,
                     ACC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_ptr = X + row * n_cols
    y_ptr = Y + row * n_cols
    cols = tl.arange(0, BLOCK)
    if SINGLE:
        mask = cols < n_cols
        x, m, e, s = _block_exp(x_ptr, n_cols, BLOCK, ACC)
        y = x * (e / s)
        tl.store(y_ptr + cols, y.to(Y.dtype.element_ty), mask=mask)
        tl.store(LSE + row, m + tl.log(s))
    else:
        lse = _online_lse(x_ptr, n_cols, BLOCK, ACC)
        tl.store(LSE + row, lse)
        for start in range(0, n_cols, BLOCK):
            c = start + cols
            mask = c < n_cols
            x = tl.load(x_ptr + c, mask=mask, other=0.0).to(ACC)
            y = x * tl.exp(x - lse)
            tl.store(y_ptr + c, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _load_xgp(x_ptr, g_ptr, c, mask, lse, ACC: tl.constexpr):
    """x, the incoming gradient g and p = exp(x - lse) at columns c (all 0 past the row)."""
    x = tl.load(x_ptr + c, mask=mask, other=0.0).to(ACC)
    g = tl.load(g_ptr + c, mask=mask, other=0.0).to(ACC)
    p = tl.where(mask, tl.exp(x - lse), 0.0).to(ACC)
    return x, g, p


@triton.jit
def _solu_bwd_kernel(X, LSE, GY, GX, n_cols, BLOCK: tl.constexpr, SINGLE: tl.constexpr,
                     ACC: tl.constexpr):
    # gx = p * (g * (1 + x) - S),  S = sum(g * x * p),  p = exp(x - lse)
    row = tl.program_id(0).to(tl.int64)
    x_ptr = X + row * n_cols
    g_ptr = GY + row * n_cols
    o_ptr = GX + row * n_cols
    lse = tl.load(LSE + row).to(ACC)
    cols = tl.arange(0, BLOCK)
    if SINGLE:
        mask = cols < n_cols
        x, g, p = _load_xgp(x_ptr, g_ptr, cols, mask, lse, ACC)
        S = tl.sum(g * x * p, 0)
        gx = p * (g * (1.0 + x) - S)
        tl.store(o_ptr + cols, gx.to(GX.dtype.element_ty), mask=mask)
    else:
        S = tl.zeros((), ACC)
        for start in range(0, n_cols, BLOCK):
            c = start + cols
            mask = c < n_cols
            x, g, p = _load_xgp(x_ptr, g_ptr, c, mask, lse, ACC)
            S += tl.sum(g * x * p, 0)
        for start in range(0, n_cols, BLOCK):
            c = start + cols
            mask = c < n_cols
            x, g, p = _load_xgp(x_ptr, g_ptr, c, mask, lse, ACC)
            gx = p * (g * (1.0 + x) - S)
            tl.store(o_ptr + c, gx.to(GX.dtype.element_ty), mask=mask)


@triton.jit
def _ln_out(y_ptr, pre_ptr, W, B, c, mask, h, hc, rstd, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
            STORE_PRE: tl.constexpr, ACC: tl.constexpr):
    """Store y = hc * rstd * w + b at columns c (hc = h - mean), and h when STORE_PRE."""
    y = hc * rstd
    if HAS_W:
        y = y * tl.load(W + c, mask=mask, other=0.0).to(ACC)
    if HAS_B:
        y = y + tl.load(B + c, mask=mask, other=0.0).to(ACC)
    tl.store(y_ptr + c, y.to(y_ptr.dtype.element_ty), mask=mask)
    if STORE_PRE:
        tl.store(pre_ptr + c, h.to(pre_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _solu_ln_fwd_kernel(X, W, B, Y, PRE, STATS, n_cols, eps, BLOCK: tl.constexpr,
                        SINGLE: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                        STORE_PRE: tl.constexpr, ACC: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_ptr = X + row * n_cols
    y_ptr = Y + row * n_cols
    pre_ptr = PRE + row * n_cols
    cols = tl.arange(0, BLOCK)
    if SINGLE:
        mask = cols < n_cols
        x, m, e, s = _block_exp(x_ptr, n_cols, BLOCK, ACC)
        h = tl.where(mask, x * (e / s), 0.0).to(ACC)
        mean = tl.sum(h, 0) / n_cols
        dev = tl.where(mask, h - mean, 0.0).to(ACC)
        var = tl.sum(dev * dev, 0) / n_cols
        rstd = 1.0 / tl.sqrt(var + eps)
        _ln_out(y_ptr, pre_ptr, W, B, cols, mask, h, dev, rstd, HAS_W, HAS_B, STORE_PRE, ACC)
        lse = m + tl.log(s)
    else:
        lse = _online_lse(x_ptr, n_cols, BLOCK, ACC)
        # LayerNorm moments of h = x * exp(x - lse), merged block by block (Chan et al.).
        mean = tl.zeros((), ACC)
        m2 = tl.zeros((), ACC)
        count = tl.zeros((), ACC)
        for start in range(0, n_cols, BLOCK):
            c = start + cols
            mask = c < n_cols
            x = tl.load(x_ptr + c, mask=mask, other=0.0).to(ACC)
            h = tl.where(mask, x * tl.exp(x - lse), 0.0).to(ACC)
            nb = tl.minimum(n_cols - start, BLOCK).to(ACC)
            bmean = tl.sum(h, 0) / nb
            bdev = tl.where(mask, h - bmean, 0.0).to(ACC)
            bm2 = tl.sum(bdev * bdev, 0)
            total = count + nb
            delta = bmean - mean
            mean = mean + delta * (nb / total)
            m2 = m2 + bm2 + delta * delta * (count * nb / total)
            count = total
        rstd = 1.0 / tl.sqrt(m2 / n_cols + eps)
        for start in range(0, n_cols, BLOCK):
            c = start + cols
            mask = c < n_cols
            x = tl.load(x_ptr + c, mask=mask, other=0.0).to(ACC)
            h = x * tl.exp(x - lse)
            _ln_out(y_ptr, pre_ptr, W, B, c, mask, h, h - mean, rstd, HAS_W, HAS_B, STORE_PRE, ACC)
    tl.store(STATS + row * 3, lse)
    tl.store(STATS + row * 3 + 1, mean)
    tl.store(STATS + row * 3 + 2, rstd)


@triton.jit
def _row_stats(STATS, row, ACC: tl.constexpr):
    """The (lse, mean, rstd) the forward saved for ``row``."""
    lse = tl.load(STATS + row * 3).to(ACC)
    mean = tl.load(STATS + row * 3 + 1).to(ACC)
    rstd = tl.load(STATS + row * 3 + 2).to(ACC)
    return lse, mean, rstd


@triton.jit
def _solu_ln_bwd_kernel(X, W, STATS, GY, GPRE, GX, PW, PB, n_rows, n_cols,
                        BLOCK: tl.constexpr, SINGLE: tl.constexpr, HAS_W: tl.constexpr,
                        HAS_GPRE: tl.constexpr, ACC: tl.constexpr):
    # Persistent: program `pid` takes rows pid, pid + P, ... and owns row `pid` of the
    # weight/bias partial buffers PW/PB (P, n_cols).
    #   xhat = (h - mean) rstd, g^ = gy w, a = mean(g^), c = mean(g^ xhat)
    #   g_h = rstd (g^ - a - xhat c) + gpre,  gx = p (g_h (1 + x) - S),  S = sum(g_h h)
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    cols = tl.arange(0, BLOCK)
    pw_ptr = PW + pid.to(tl.int64) * n_cols
    pb_ptr = PB + pid.to(tl.int64) * n_cols
    if SINGLE:
        cmask = cols < n_cols
        if HAS_W:
            w = tl.load(W + cols, mask=cmask, other=0.0).to(ACC)
        dw = tl.zeros((BLOCK,), ACC)
        db = tl.zeros((BLOCK,), ACC)
        for row in range(pid, n_rows, nprog):
            r64 = row + tl.zeros((), tl.int64)  # 64-bit offsets (a python int in the interpreter)
            lse, mean, rstd = _row_stats(STATS, r64, ACC)
            x, gy, p = _load_xgp(X + r64 * n_cols, GY + r64 * n_cols, cols, cmask, lse, ACC)
            h = x * p
            xhat = tl.where(cmask, (h - mean) * rstd, 0.0).to(ACC)
            if HAS_W:
                g = gy * w
            else:
                g = gy
            a = tl.sum(g, 0) / n_cols
            c = tl.sum(g * xhat, 0) / n_cols
            gh = rstd * (g - a - xhat * c)
            if HAS_GPRE:
                gh += tl.load(GPRE + r64 * n_cols + cols, mask=cmask, other=0.0).to(ACC)
            gh = tl.where(cmask, gh, 0.0).to(ACC)
            S = tl.sum(gh * h, 0)
            gx = p * (gh * (1.0 + x) - S)
            tl.store(GX + r64 * n_cols + cols, gx.to(GX.dtype.element_ty), mask=cmask)
            dw += gy * xhat
            db += gy
        tl.store(pw_ptr + cols, dw, mask=cmask)
        tl.store(pb_ptr + cols, db, mask=cmask)
    else:
        for start in range(0, n_cols, BLOCK):
            c0 = start + cols
            zero = tl.zeros((BLOCK,), ACC)
            tl.store(pw_ptr + c0, zero, mask=c0 < n_cols)
            tl.store(pb_ptr + c0, zero, mask=c0 < n_cols)
        for row in range(pid, n_rows, nprog):
            r64 = row + tl.zeros((), tl.int64)  # 64-bit offsets (a python int in the interpreter)
            x_ptr = X + r64 * n_cols
            gy_ptr = GY + r64 * n_cols
            gp_ptr = GPRE + r64 * n_cols
            lse, mean, rstd = _row_stats(STATS, r64, ACC)
            sa = tl.zeros((), ACC)
            sc = tl.zeros((), ACC)
            sx = tl.zeros((), ACC)
            sxx = tl.zeros((), ACC)
            sgh = tl.zeros((), ACC)
            for start in range(0, n_cols, BLOCK):
                cc = start + cols
                mask = cc < n_cols
                x, gy, p = _load_xgp(x_ptr, gy_ptr, cc, mask, lse, ACC)
                h = x * p
                xhat = tl.where(mask, (h - mean) * rstd, 0.0).to(ACC)
                if HAS_W:
                    g = gy * tl.load(W + cc, mask=mask, other=0.0).to(ACC)
                else:
                    g = gy
                sa += tl.sum(g, 0)
                sc += tl.sum(g * xhat, 0)
                sx += tl.sum(xhat, 0)
                sxx += tl.sum(xhat * xhat, 0)
                if HAS_GPRE:
                    gp = tl.load(gp_ptr + cc, mask=mask, other=0.0).to(ACC)
                    sgh += tl.sum(gp * h, 0)
                # this program's own partial row: no other program touches it
                tl.store(pw_ptr + cc, tl.load(pw_ptr + cc, mask=mask, other=0.0) + gy * xhat,
                         mask=mask)
                tl.store(pb_ptr + cc, tl.load(pb_ptr + cc, mask=mask, other=0.0) + gy,
                         mask=mask)
            a = sa / n_cols
            c = sc / n_cols
            # S = sum(g_h h) with h = mean + xhat / rstd, expanded over the sums above.
            S = sc - a * sx - c * sxx - rstd * mean * c * sx + sgh
            for start in range(0, n_cols, BLOCK):
                cc = start + cols
                mask = cc < n_cols
                x, gy, p = _load_xgp(x_ptr, gy_ptr, cc, mask, lse, ACC)
                xhat = (x * p - mean) * rstd
                if HAS_W:
                    g = gy * tl.load(W + cc, mask=mask, other=0.0).to(ACC)
                else:
                    g = gy
                gh = rstd * (g - a - xhat * c)
                if HAS_GPRE:
                    gh += tl.load(gp_ptr + cc, mask=mask, other=0.0).to(ACC)
                gx = p * (gh * (1.0 + x) - S)
                tl.store(GX + r64 * n_cols + cc, gx.to(GX.dtype.element_ty), mask=mask)
