"""Sparse SAE ops: pyinterp.ops.topk_encode vs torch (sub, matmul, add, topk, relu) and vs the
bare GEMM x @ W_enc (the floor); sparse_decode forward (and forward+backward) vs a dense decode
(dense code @ W_dec) in torch.

Issue targets (CPU, 2 threads, float32, N=4096, d_in=512, d_sae=16384, k=32):
topk_encode >= 1.25x faster than torch and within 1.15x of the GEMM; sparse_decode forward
>= 20x faster than the dense decode. GPU (bf16, N=8192, d_in=4096, d_sae=131072, k=64):
topk_encode within 1.2x of cuBLAS, sparse_decode at >= 70% of DRAM bandwidth.

All implementations of one case are timed in alternation (round-robin), so load changes on a
shared machine hit each alike and the ratios stay meaningful.
"""
from __future__ import annotations

import torch

from pyinterp.bench.backends import timed_backends
from pyinterp.bench.timing import Row, interleaved_medians, peak_memory

CPU_FULL = (4096, 512, 16384, 32)
CPU_QUICK = (1024, 256, 4096, 32)
GPU_FULL = (8192, 4096, 131072, 64)
GPU_QUICK = (2048, 1024, 32768, 64)


def _visible_peaks() -> None:
    """Let peak_memory's RSS sampling see CPU buffers: a fixed 1 MiB mmap threshold makes glibc
    map (and unmap) every large buffer instead of recycling its heap. No-op off glibc."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _inputs(N, d_in, d_sae, k, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d_in, generator=g)
    W_enc = torch.randn(d_in, d_sae, generator=g) / d_in ** 0.5
    b_enc = torch.randn(d_sae, generator=g) * 0.1
    b_dec = torch.randn(d_in, generator=g) * 0.1
    W_dec = torch.randn(d_sae, d_in, generator=g) / d_in ** 0.5
    return [t.to(device=device, dtype=dtype) for t in (x, W_enc, b_enc, b_dec, W_dec)]


def run(args) -> list[Row]:
    from pyinterp import ops

    device = torch.device(getattr(args, "device", "cpu"))
    quick = getattr(args, "quick", False)
    gpu = device.type == "cuda"
    if not gpu:
        _visible_peaks()
    N, d_in, d_sae, k = (GPU_QUICK if quick else GPU_FULL) if gpu else (CPU_QUICK if quick else CPU_FULL)
    dtype = torch.bfloat16 if gpu else torch.float32
    dname = str(dtype).replace("torch.", "")
    repeat = 3 if quick else 7
    x, W_enc, b_enc, b_dec, W_dec = _inputs(N, d_in, d_sae, k, dtype, device)
    shape = f"N={N} d_in={d_in} d_sae={d_sae} k={k}"
    rows: list[Row] = []

    # ---- topk_encode --------------------------------------------------------------------
    def torch_encode():
        pre = torch.matmul(x - b_dec, W_enc) + b_enc
        v, i = torch.topk(pre, k, dim=-1)
        return torch.relu(v), i

    def gemm():
        return x @ W_enc

    backends = timed_backends("topk_encode", device.type)
    fns = {"torch": torch_encode, "gemm": gemm}
    for b in backends:
        fns[b] = (lambda b=b: ops.topk_encode(x, W_enc, b_enc, b_dec, k, backend=b))
    t = interleaved_medians(fns, repeat, device=device)
    gemm_bytes = (x.numel() + W_enc.numel()) * x.element_size()
    rows.append(Row("topk_encode", shape, dname, "torch sub+matmul+add+topk+relu", t["torch"],
                    roofline_seconds=t["gemm"], peak_bytes=peak_memory(torch_encode, device)))
    rows.append(Row("topk_encode", shape, dname, "bare GEMM x @ W_enc (floor)", t["gemm"],
                    baseline="torch", baseline_seconds=t["torch"], roofline_seconds=t["gemm"]))
    for b in backends:
        rows.append(Row("topk_encode", shape, dname, f"pyinterp [{b}]", t[b], bytes_moved=gemm_bytes,
                        baseline="torch", baseline_seconds=t["torch"], roofline_seconds=t["gemm"],
                        peak_bytes=peak_memory(fns[b], device)))

    # ---- sparse_decode ------------------------------------------------------------------
    values, indices = ops.topk_encode(x, W_enc, b_enc, b_dec, k, backend="reference"
                                      if device.type == "cpu" and not backends else None)
    values, indices = values.contiguous(), indices.contiguous()

    def dense_decode():
        code = torch.zeros(N, d_sae, dtype=dtype, device=device).scatter_(1, indices, values)
        return code @ W_dec + b_dec

    dbackends = timed_backends("sparse_decode", device.type)
    fns = {"dense": dense_decode}
    for b in dbackends:
        fns[b] = (lambda b=b: ops.sparse_decode(values, indices, W_dec, b_dec, check_indices=False,
                                                backend=b))
    t = interleaved_medians(fns, repeat, device=device)
    # bytes a sparse decode must move: k rows of W_dec per output row (upper bound: no reuse),
    # the code and the output
    esz = W_dec.element_size()
    dec_bytes = N * k * d_in * esz + values.numel() * (esz + 8) + N * d_in * esz
    uniq = int(torch.unique(indices).numel())
    dec_min_bytes = uniq * d_in * esz + values.numel() * (esz + 8) + N * d_in * esz
    rows.append(Row("sparse_decode fwd", shape, dname, "torch dense code @ W_dec", t["dense"],
                    peak_bytes=peak_memory(dense_decode, device)))
    for b in dbackends:
        rows.append(Row("sparse_decode fwd", shape, dname, f"pyinterp [{b}]", t[b],
                        bytes_moved=dec_bytes, baseline="torch dense", baseline_seconds=t["dense"],
                        peak_bytes=peak_memory(fns[b], device),
                        extra={"min_bytes_unique_rows": dec_min_bytes}))

    # ---- sparse_decode forward + backward (training direction) --------------------------
    vg = values.clone().requires_grad_()
    Wg = W_dec.clone().requires_grad_()
    bg = b_dec.clone().requires_grad_()
    go = torch.randn(N, d_in, generator=torch.Generator().manual_seed(1)).to(device, dtype)

    def dense_fb():
        code = torch.zeros(N, d_sae, dtype=dtype, device=device).scatter(1, indices, vg)
        torch.autograd.grad(code @ Wg + bg, [vg, Wg, bg], go)

    fns = {"dense": dense_fb}
    for b in dbackends:
        fns[b] = (lambda b=b: torch.autograd.grad(
            ops.sparse_decode(vg, indices, Wg, bg, check_indices=False, backend=b), [vg, Wg, bg], go))
    t = interleaved_medians(fns, max(3, repeat // 2), device=device)
    rows.append(Row("sparse_decode fwd+bwd", shape, dname, "torch dense code @ W_dec", t["dense"]))
    for b in dbackends:
        rows.append(Row("sparse_decode fwd+bwd", shape, dname, f"pyinterp [{b}]", t[b],
                        baseline="torch dense", baseline_seconds=t["dense"]))
    rows += _train_step_rows(x, W_enc, b_enc, b_dec, W_dec, k, dbackends, 3, device, shape, dname)
    return rows


def _train_step_rows(x, W_enc, b_enc, b_dec, W_dec, k, backends, repeat, device, shape, dname):
    """One TopK SAE step (encode, decode, MSE, backward, Adam) written from the ops, vs the same
    maths in dense torch (dense pre-activation, topk, dense code, dense decode). The library's
    module-level version is ``pyinterp bench sae_train``."""
    from pyinterp import ops

    def make(body):
        params = [t.clone().requires_grad_() for t in (W_enc, b_enc, b_dec, W_dec)]
        opt = torch.optim.Adam(params, lr=1e-5)

        def step():
            opt.zero_grad(set_to_none=True)
            body(*params).backward()
            opt.step()
        return step

    def dense(W, be, bd, Wd):
        pre = (x - bd) @ W + be
        v, i = torch.topk(pre, k, dim=-1)
        code = torch.zeros_like(pre).scatter(1, i, torch.relu(v))
        return (code @ Wd + bd - x).square().sum(-1).mean()

    def sparse(b):
        def body(W, be, bd, Wd):
            v, i = ops.topk_encode(x, W, be, bd, k, backend=b)
            out = ops.sparse_decode(v, i, Wd, bd, check_indices=False, backend=b)
            return (out - x).square().sum(-1).mean()
        return body

    fns = {"dense": make(dense)}
    for b in backends:
        fns[b] = make(sparse(b))
    t = interleaved_medians(fns, repeat, device=device)
    rows = [Row("topk_sae_train_step", shape, dname, "torch dense (same maths)", t["dense"])]
    for b in backends:
        rows.append(Row("topk_sae_train_step", shape, dname, f"pyinterp ops [{b}]", t[b],
                        baseline="torch dense", baseline_seconds=t["dense"]))
    return rows
