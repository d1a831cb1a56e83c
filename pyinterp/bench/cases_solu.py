"""SoLU: pyinterp's solu / fused solu_ln (forward, and forward+backward) on every backend that
runs on the device, vs torch eager (``x * x.softmax(-1)``, then ``F.layer_norm``) and vs one
plain copy of x (``y.copy_(x)``: the memory roofline), all measured in the same run.

Issue targets: CPU (2 threads), solu_ln (8192, 2048) float32 forward >= 3x torch eager and
forward+backward >= 2x; GPU forward >= 80% of DRAM bandwidth (x roofline <= 1.25) and >= 3x
torch eager. On the GPU the bf16 solu_ln forward is also timed against torch.compile of the
eager code (compiled before timing; its fused Triton kernel is the strongest torch baseline).

GB/s counts the bytes an ideal kernel moves: forward reads x and writes y (2 tensors),
forward+backward adds reading x and the upstream gradient and writing dx (5 tensors).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pyinterp.bench.backends import timed_backends
from pyinterp.bench.timing import Row, interleaved_medians, peak_memory


def _eager(op, x, w, b):
    pre = x * x.softmax(-1)
    return pre if op == "solu" else F.layer_norm(pre, (x.shape[-1],), w, b)


def _ours(op, x, w, b, backend):
    from pyinterp import ops

    if op == "solu":
        return ops.solu(x, backend=backend)
    return ops.solu_ln(x, w, b, backend=backend)


def _fwd_bwd(fn, x, w, b, gy):
    leaves = [t for t in (x, w, b) if t is not None]
    for t in leaves:
        t.grad = None
    fn().backward(gy)


def _case_rows(device, shape, dtype, backends, repeat, with_memory, compiled=False):
    g = torch.Generator().manual_seed(0)
    d = shape[-1]
    x = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    w = (1 + 0.1 * torch.randn(d, generator=g)).to(device=device, dtype=dtype)
    b = (0.1 * torch.randn(d, generator=g)).to(device=device, dtype=dtype)
    gy = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    y = torch.empty_like(x)
    xg, wg, bg = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
    nbytes = x.numel() * x.element_size()
    shape_s = "x".join(map(str, shape))
    dname = str(dtype).replace("torch.", "")
    rows = []
    for op in ("solu", "solu_ln"):
        fwd = {"copy": lambda: y.copy_(x), "eager": lambda: _eager(op, x, w, b)}
        if compiled and op == "solu_ln":
            eager_ln = torch.compile(lambda x, w, b: _eager("solu_ln", x, w, b), dynamic=False)
            fwd["compile"] = lambda: eager_ln(x, w, b)
        fwd.update({be: (lambda be=be: _ours(op, x, w, b, be)) for be in backends})
        with torch.no_grad():
            tf = interleaved_medians(fwd, repeat, device=device, warmup=2)
        both = {"eager": lambda: _fwd_bwd(lambda: _eager(op, xg, wg, bg), xg, wg, bg, gy)}
        both.update({be: (lambda be=be: _fwd_bwd(lambda: _ours(op, xg, wg, bg, be), xg, wg, bg, gy))
                     for be in backends})
        tb = interleaved_medians(both, max(3, repeat // 2), device=device)
        copy = tf["copy"]
        mem = (lambda fn: peak_memory(fn, device)) if with_memory else (lambda fn: None)
        if op == "solu":
            rows.append(Row("copy", shape_s, dname, "y.copy_(x) (roofline)", copy,
                            bytes_moved=2 * nbytes, roofline_seconds=copy))
        for label, times, moved, fns in (("fwd", tf, 2 * nbytes, fwd), ("fwd+bwd", tb, 5 * nbytes, both)):
            eager_name = ("x * x.softmax(-1)" if op == "solu"
                          else "F.layer_norm(x * x.softmax(-1))")
            with torch.no_grad() if label == "fwd" else torch.enable_grad():
                rows.append(Row(f"{op} {label}", shape_s, dname, f"torch eager: {eager_name}",
                                times["eager"], bytes_moved=moved, roofline_seconds=copy,
                                peak_bytes=mem(fns["eager"])))
                if "compile" in times:
                    rows.append(Row(f"{op} {label}", shape_s, dname, f"torch.compile: {eager_name}",
                                    times["compile"], bytes_moved=moved, baseline="torch eager",
                                    baseline_seconds=times["eager"], roofline_seconds=copy))
                for be in backends:
                    extra = ({"x_compile": times["compile"] / times[be]} if "compile" in times
                             else {})
                    rows.append(Row(f"{op} {label}", shape_s, dname, f"pyinterp [{be}]", times[be],
                                    bytes_moved=moved, baseline="torch eager",
                                    baseline_seconds=times["eager"], roofline_seconds=copy,
                                    peak_bytes=mem(fns[be]), extra=extra))
    return rows


def run(args) -> list[Row]:
    device = torch.device(getattr(args, "device", "cpu") or "cpu")
    quick = getattr(args, "quick", False)
    backends = timed_backends("solu_ln", device.type)
    if not backends:
        return []
    if device.type == "cuda":
        cases = [((4096, 2048) if quick else (16384, 4096), torch.float32),
                 ((4096, 2048) if quick else (16384, 4096), torch.bfloat16),
                 ((8, 65536) if quick else (64, 262144), torch.float32)]  # multi-block rows
        repeat = 10 if quick else 30
    else:
        cases = [((1024, 2048) if quick else (8192, 2048), torch.float32)]
        repeat = 5 if quick else 11
    rows = []
    for shape, dtype in cases:
        rows += _case_rows(device, shape, dtype, backends, repeat, with_memory=not quick,
                           compiled=device.type == "cuda" and dtype == torch.bfloat16)
    return rows
