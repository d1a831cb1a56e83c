"""Sparse SAE ops: pyinterp.ops.topk_encode vs torch (sub, matmul, add, topk, relu) and vs the
bare GEMM x @ W_enc (the floor); sparse_decode forward (and forward+backward) vs a dense decode
(dense code @ W_dec) in torch.

Issue targets (CPU, 2 threads, float32, N=4096, d_in=512, d_sae=16384, k=32):
topk_encode >= 1.25x faster than torch and within 1.15x of the GEMM; sparse_decode forward
>= 20x faster than the dense decode. GPU (bf16, N=8192, d_in=4096, d_sae=131072, k=64):
topk_encode within 1.2x of cuBLAS, sparse_decode at >= 70% of DRAM bandwidth.

Every torch baseline is also timed as ``torch.compile(<baseline>, dynamic=False)`` (compiled
in the warm-up round; the train step compiles the dense loss, Adam stays eager, as in
cases_dictionaries). All implementations of one case are timed in alternation (round-robin), so
load changes on a shared machine hit each alike and the ratios stay meaningful.
"""
from __future__ import annotations

from functools import lru_cache

import torch

from pyinterp.bench.backends import timed_backends
from pyinterp.bench.suite import Group
from pyinterp.bench.timing import Row, peak_memory

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


@lru_cache(maxsize=1)  # the groups of one case share their inputs
def _inputs(N, d_in, d_sae, k, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d_in, generator=g)
    W_enc = torch.randn(d_in, d_sae, generator=g) / d_in ** 0.5
    b_enc = torch.randn(d_sae, generator=g) * 0.1
    b_dec = torch.randn(d_in, generator=g) * 0.1
    W_dec = torch.randn(d_sae, d_in, generator=g) / d_in ** 0.5
    return [t.to(device=device, dtype=dtype) for t in (x, W_enc, b_enc, b_dec, W_dec)]


def _size(device, quick):
    gpu = device.type == "cuda"
    N, d_in, d_sae, k = (GPU_QUICK if quick else GPU_FULL) if gpu else (CPU_QUICK if quick else CPU_FULL)
    return N, d_in, d_sae, k, torch.bfloat16 if gpu else torch.float32


def torch_encode(x, W_enc, b_enc, b_dec, k):
    """The torch top-k encode (eager baseline, and what torch.compile compiles)."""
    pre = torch.matmul(x - b_dec, W_enc) + b_enc
    v, i = torch.topk(pre, k, dim=-1)
    return torch.relu(v), i


def dense_decode(values, indices, W_dec, b_dec):
    """Decode through the dense (N, d_sae) code, scattered in place into fresh zeros."""
    code = torch.zeros(values.shape[0], W_dec.shape[0], dtype=values.dtype, device=values.device)
    return code.scatter_(1, indices, values) @ W_dec + b_dec


def dense_decode_differentiable(values, indices, W_dec, b_dec):
    """The same with an out-of-place scatter, so that autograd reaches ``values``."""
    code = torch.zeros(values.shape[0], W_dec.shape[0], dtype=values.dtype, device=values.device)
    return code.scatter(1, indices, values) @ W_dec + b_dec


def dense_sae_loss(x, k, W_enc, b_enc, b_dec, W_dec):
    """TopK SAE loss in dense torch: dense pre-activation, topk, dense code, dense decode, MSE."""
    pre = (x - b_dec) @ W_enc + b_enc
    v, i = torch.topk(pre, k, dim=-1)
    code = torch.zeros_like(pre).scatter(1, i, torch.relu(v))
    return (code @ W_dec + b_dec - x).square().sum(-1).mean()


def _compiled(fn):
    return torch.compile(fn, dynamic=False)


def _encode_calls(size, device, backends):
    from pyinterp import ops

    N, d_in, d_sae, k, dtype = size
    x, W_enc, b_enc, b_dec, _ = _inputs(N, d_in, d_sae, k, dtype, device)
    encode_compiled = _compiled(torch_encode)
    fns = {"torch": lambda: torch_encode(x, W_enc, b_enc, b_dec, k),
           "torch_compile": lambda: encode_compiled(x, W_enc, b_enc, b_dec, k),
           "gemm_floor": lambda: x @ W_enc}
    fns.update({b: (lambda b=b: ops.topk_encode(x, W_enc, b_enc, b_dec, k, backend=b))
                for b in backends})
    return fns


def _code(size, device):
    """The top-k code the decoder benchmarks decode (contiguous values / indices)."""
    from pyinterp import ops

    N, d_in, d_sae, k, dtype = size
    x, W_enc, b_enc, b_dec, _ = _inputs(N, d_in, d_sae, k, dtype, device)
    values, indices = ops.topk_encode(x, W_enc, b_enc, b_dec, k)
    return values.contiguous(), indices.contiguous()


def _decode_calls(size, device, backends):
    from pyinterp import ops

    N, d_in, d_sae, k, dtype = size
    *_, b_dec, W_dec = _inputs(N, d_in, d_sae, k, dtype, device)
    values, indices = _code(size, device)
    decode_compiled = _compiled(dense_decode)
    fns = {"torch_dense": lambda: dense_decode(values, indices, W_dec, b_dec),
           "torch_compile": lambda: decode_compiled(values, indices, W_dec, b_dec)}
    fns.update({b: (lambda b=b: ops.sparse_decode(values, indices, W_dec, b_dec, check_indices=False,
                                                  backend=b)) for b in backends})
    return fns


def _decode_backward_calls(size, device, backends):
    from pyinterp import ops

    N, d_in, d_sae, k, dtype = size
    *_, b_dec, W_dec = _inputs(N, d_in, d_sae, k, dtype, device)
    values, indices = _code(size, device)
    vg, Wg, bg = (t.clone().requires_grad_() for t in (values, W_dec, b_dec))
    go = torch.randn(N, d_in, generator=torch.Generator().manual_seed(1)).to(device, dtype)

    def grads(decode):  # the compiled decode's backward is compiled too (AOTAutograd)
        return lambda: torch.autograd.grad(decode(vg, indices, Wg, bg), [vg, Wg, bg], go)

    fns = {"torch_dense": grads(dense_decode_differentiable),
           "torch_compile": grads(_compiled(dense_decode_differentiable))}
    fns.update({b: (lambda b=b: torch.autograd.grad(
        ops.sparse_decode(vg, indices, Wg, bg, check_indices=False, backend=b), [vg, Wg, bg], go))
        for b in backends})
    return fns


def _train_step_calls(size, device, backends):
    """One TopK SAE step (encode, decode, MSE, backward, Adam) written from the ops, vs the same
    maths in dense torch (dense pre-activation, topk, dense code, dense decode). The library's
    module-level version is ``pyinterp bench sae_train``."""
    from pyinterp import ops

    N, d_in, d_sae, k, dtype = size
    x, W_enc, b_enc, b_dec, W_dec = _inputs(N, d_in, d_sae, k, dtype, device)

    def make(body):
        params = [t.clone().requires_grad_() for t in (W_enc, b_enc, b_dec, W_dec)]
        opt = torch.optim.Adam(params, lr=1e-5)

        def step():  # returns the loss before the update (for the tests)
            opt.zero_grad(set_to_none=True)
            loss = body(*params)
            loss.backward()
            opt.step()
            return loss.detach()
        return step

    loss_compiled = _compiled(dense_sae_loss)

    def sparse(b):
        def body(W, be, bd, Wd):
            v, i = ops.topk_encode(x, W, be, bd, k, backend=b)
            out = ops.sparse_decode(v, i, Wd, bd, check_indices=False, backend=b)
            return (out - x).square().sum(-1).mean()
        return body

    fns = {"torch_dense": make(lambda *p: dense_sae_loss(x, k, *p)),
           "torch_compile": make(lambda *p: loss_compiled(x, k, *p))}
    fns.update({b: make(sparse(b)) for b in backends})
    return fns


def groups(device, quick=False) -> list[Group]:
    size = _size(device, quick)
    N, d_in, d_sae, k, dtype = size
    repeat = 3 if quick else 7
    enc = timed_backends("topk_encode", device.type)
    dec = timed_backends("sparse_decode", device.type)
    info = {"shape": f"N={N} d_in={d_in} d_sae={d_sae} k={k}",
            "dtype": str(dtype).replace("torch.", "")}
    return [
        Group("TopKEncode", ("torch", "torch_compile", "gemm_floor", *enc),
              lambda: _encode_calls(size, device, enc), repeat=repeat, info=info),
        Group("SparseDecode", ("torch_dense", "torch_compile", *dec),
              lambda: _decode_calls(size, device, dec), repeat=repeat, info=info),
        Group("SparseDecodeForwardBackward", ("torch_dense", "torch_compile", *dec),
              lambda: _decode_backward_calls(size, device, dec), grad=True,
              repeat=max(3, repeat // 2), info=info),
        Group("TopKSAETrainStep", ("torch_dense", "torch_compile", *dec),
              lambda: _train_step_calls(size, device, dec), grad=True, repeat=3, info=info),
    ]


def run(args) -> list[Row]:
    device = torch.device(getattr(args, "device", "cpu"))
    quick = getattr(args, "quick", False)
    if device.type != "cuda":
        _visible_peaks()
    enc_g, dec_g, fb_g, step_g = groups(device, quick)
    N, d_in, d_sae, k, dtype = _size(device, quick)
    x, W_enc, *_, W_dec = _inputs(N, d_in, d_sae, k, dtype, device)
    shape, dname = enc_g.info["shape"], enc_g.info["dtype"]
    enc = [b for b in enc_g.impls if b not in ("torch", "torch_compile", "gemm_floor")]
    dec = [b for b in dec_g.impls if b not in ("torch_dense", "torch_compile")]
    rows: list[Row] = []

    fns, t = enc_g.time(device)
    gemm_bytes = (x.numel() + W_enc.numel()) * x.element_size()
    rows.append(Row("topk_encode", shape, dname, "torch sub+matmul+add+topk+relu", t["torch"],
                    roofline_seconds=t["gemm_floor"], peak_bytes=peak_memory(fns["torch"], device)))
    rows.append(Row("topk_encode", shape, dname, "torch.compile: sub+matmul+add+topk+relu",
                    t["torch_compile"], baseline="torch", baseline_seconds=t["torch"],
                    roofline_seconds=t["gemm_floor"],
                    peak_bytes=peak_memory(fns["torch_compile"], device)))
    rows.append(Row("topk_encode", shape, dname, "bare GEMM x @ W_enc (floor)", t["gemm_floor"],
                    baseline="torch", baseline_seconds=t["torch"], roofline_seconds=t["gemm_floor"]))
    for b in enc:
        rows.append(Row("topk_encode", shape, dname, f"pyinterp [{b}]", t[b], bytes_moved=gemm_bytes,
                        baseline="torch", baseline_seconds=t["torch"],
                        roofline_seconds=t["gemm_floor"], peak_bytes=peak_memory(fns[b], device),
                        extra={"x_compile": t["torch_compile"] / t[b]}))

    fns, t = dec_g.time(device)
    values, indices = _code(_size(device, quick), device)
    # bytes a sparse decode must move: k rows of W_dec per output row (upper bound: no reuse),
    # the code and the output
    esz = W_dec.element_size()
    dec_bytes = N * k * d_in * esz + values.numel() * (esz + 8) + N * d_in * esz
    uniq = int(torch.unique(indices).numel())
    dec_min_bytes = uniq * d_in * esz + values.numel() * (esz + 8) + N * d_in * esz
    rows.append(Row("sparse_decode fwd", shape, dname, "torch dense code @ W_dec", t["torch_dense"],
                    peak_bytes=peak_memory(fns["torch_dense"], device)))
    rows.append(Row("sparse_decode fwd", shape, dname, "torch.compile: dense code @ W_dec",
                    t["torch_compile"], baseline="torch dense", baseline_seconds=t["torch_dense"],
                    peak_bytes=peak_memory(fns["torch_compile"], device)))
    for b in dec:
        rows.append(Row("sparse_decode fwd", shape, dname, f"pyinterp [{b}]", t[b],
                        bytes_moved=dec_bytes, baseline="torch dense",
                        baseline_seconds=t["torch_dense"], peak_bytes=peak_memory(fns[b], device),
                        extra={"min_bytes_unique_rows": dec_min_bytes,
                               "x_compile": t["torch_compile"] / t[b]}))

    for group, op, label, ours in (
            (fb_g, "sparse_decode fwd+bwd", "dense code @ W_dec", "pyinterp"),
            (step_g, "topk_sae_train_step", "dense (same maths)", "pyinterp ops")):
        _, t = group.time(device)
        comp = "dense loss, torch Adam" if group is step_g else label
        rows.append(Row(op, shape, dname, f"torch {label}", t["torch_dense"]))
        rows.append(Row(op, shape, dname, f"torch.compile: {comp}", t["torch_compile"],
                        baseline="torch dense", baseline_seconds=t["torch_dense"]))
        for b in dec:
            rows.append(Row(op, shape, dname, f"{ours} [{b}]", t[b], baseline="torch dense",
                            baseline_seconds=t["torch_dense"],
                            extra={"x_compile": t["torch_compile"] / t[b]}))
    return rows
