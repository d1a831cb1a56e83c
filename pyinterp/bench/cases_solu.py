"""SoLU: pyinterp's solu / fused solu_ln (forward, and forward+backward) on every backend that
runs on the device, vs torch eager (``x * x.softmax(-1)``, then ``F.layer_norm``) and vs one
plain copy of x (``y.copy_(x)``: the memory roofline), all measured in the same run.

Issue targets: CPU (2 threads), solu_ln (8192, 2048) float32 forward >= 3x torch eager and
forward+backward >= 2x; GPU forward >= 80% of DRAM bandwidth (x roofline <= 1.25) and >= 3x
torch eager. Each case is also timed against ``torch.compile`` of the eager code, forward and
forward+backward (``dynamic=False``, compiled in the warm-up round; Inductor's fused kernel,
C++ on the CPU and Triton on the GPU, is the strongest torch baseline). On the GPU only the
bf16 case (the one with targets) is compiled: a cold Inductor compile costs seconds per graph,
and the one-call GPU check (tools/gpu_check.sh) has minutes for every family.

GB/s counts the bytes an ideal kernel moves: forward reads x and writes y (2 tensors),
forward+backward adds reading x and the upstream gradient and writing dx (5 tensors).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pyinterp.bench.backends import timed_backends
from pyinterp.bench.suite import Group
from pyinterp.bench.timing import Row

EAGER_NAMES = {"solu": "x * x.softmax(-1)", "solu_ln": "F.layer_norm(x * x.softmax(-1))"}


def _eager(op, x, w, b):
    pre = x * x.softmax(-1)
    return pre if op == "solu" else F.layer_norm(pre, (x.shape[-1],), w, b)


def _ours(op, x, w, b, backend):
    from pyinterp import ops

    if op == "solu":
        return ops.solu(x, backend=backend)
    return ops.solu_ln(x, w, b, backend=backend)


def _inputs(shape, dtype, device):
    g = torch.Generator().manual_seed(0)
    d = shape[-1]
    x = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    w = (1 + 0.1 * torch.randn(d, generator=g)).to(device=device, dtype=dtype)
    b = (0.1 * torch.randn(d, generator=g)).to(device=device, dtype=dtype)
    gy = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    return x, w, b, gy


def _compiled(op):
    return torch.compile(lambda x, w, b: _eager(op, x, w, b), dynamic=False)


def _forward_calls(op, shape, dtype, device, backends, compiled):
    x, w, b, _ = _inputs(shape, dtype, device)
    y = torch.empty_like(x)
    fns = {"copy": lambda: y.copy_(x), "torch_eager": lambda: _eager(op, x, w, b)}
    if compiled:
        fn = _compiled(op)
        fns["torch_compile"] = lambda: fn(x, w, b)
    fns.update({be: (lambda be=be: _ours(op, x, w, b, be)) for be in backends})
    return fns


def _backward_calls(op, shape, dtype, device, backends, compiled):
    x, w, b, gy = _inputs(shape, dtype, device)
    xg, wg, bg = (t.detach().clone().requires_grad_(True) for t in (x, w, b))

    def step(fn):
        def call():
            xg.grad = wg.grad = bg.grad = None
            fn().backward(gy)
        return call
    fns = {"torch_eager": step(lambda: _eager(op, xg, wg, bg))}
    if compiled:
        fn = _compiled(op)
        fns["torch_compile"] = step(lambda: fn(xg, wg, bg))
    fns.update({be: step(lambda be=be: _ours(op, xg, wg, bg, be)) for be in backends})
    return fns


def _cases(device, quick):
    if device.type == "cuda":
        return [((4096, 2048) if quick else (16384, 4096), torch.float32),
                ((4096, 2048) if quick else (16384, 4096), torch.bfloat16),
                ((8, 65536) if quick else (64, 262144), torch.float32)]  # multi-block rows
    return [((1024, 2048) if quick else (8192, 2048), torch.float32)]


def groups(device, quick=False) -> list[Group]:
    backends = timed_backends("solu_ln", device.type)
    repeat = (10 if quick else 30) if device.type == "cuda" else (5 if quick else 11)
    out = []
    for shape, dtype in _cases(device, quick):
        nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        info = {"shape": "x".join(map(str, shape)), "dtype": str(dtype).replace("torch.", ""),
                "nbytes": nbytes}
        compiled = device.type != "cuda" or dtype == torch.bfloat16
        comp = ("torch_compile",) if compiled else ()
        for op, cls in (("solu", "SoLU"), ("solu_ln", "SoLULN")):
            out.append(Group(f"{cls}Forward", ("copy", "torch_eager", *comp, *backends),
                             lambda op=op, s=shape, dt=dtype, c=compiled:
                             _forward_calls(op, s, dt, device, backends, c),
                             peakmem=True, repeat=repeat, warmup=2, info=dict(info, op=op)))
            out.append(Group(f"{cls}ForwardBackward", ("torch_eager", *comp, *backends),
                             lambda op=op, s=shape, dt=dtype, c=compiled:
                             _backward_calls(op, s, dt, device, backends, c),
                             grad=True, repeat=max(3, repeat // 2), info=dict(info, op=op)))
    return out


def run(args) -> list[Row]:
    device = torch.device(getattr(args, "device", "cpu") or "cpu")
    quick = getattr(args, "quick", False)
    backends = timed_backends("solu_ln", device.type)
    if not backends:
        return []
    rows, copy = [], None
    for group in groups(device, quick):
        info, op = group.info, group.info["op"]
        shape_s, dname, nbytes = info["shape"], info["dtype"], info["nbytes"]
        fns, t = group.time(device)
        mem = (lambda fn: None) if quick else (lambda fn: group.peak(fn, device))
        if not group.grad:
            label, moved, copy = "fwd", 2 * nbytes, t["copy"]
            if op == "solu":
                rows.append(Row("copy", shape_s, dname, "y.copy_(x) (roofline)", copy,
                                bytes_moved=2 * nbytes, roofline_seconds=copy))
        else:
            label, moved = "fwd+bwd", 5 * nbytes
        rows.append(Row(f"{op} {label}", shape_s, dname, f"torch eager: {EAGER_NAMES[op]}",
                        t["torch_eager"], bytes_moved=moved, roofline_seconds=copy,
                        peak_bytes=mem(fns["torch_eager"])))
        if "torch_compile" in t:
            rows.append(Row(f"{op} {label}", shape_s, dname, f"torch.compile: {EAGER_NAMES[op]}",
                            t["torch_compile"], bytes_moved=moved, baseline="torch eager",
                            baseline_seconds=t["torch_eager"], roofline_seconds=copy,
                            peak_bytes=mem(fns["torch_compile"])))
        for be in backends:
            extra = {"x_compile": t["torch_compile"] / t[be]} if "torch_compile" in t else {}
            rows.append(Row(f"{op} {label}", shape_s, dname, f"pyinterp [{be}]", t[be],
                            bytes_moved=moved, baseline="torch eager",
                            baseline_seconds=t["torch_eager"], roofline_seconds=copy,
                            peak_bytes=mem(fns[be]), extra=extra))
    return rows
