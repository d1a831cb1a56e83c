"""Persona projections: pyinterp.ops.persona_project (one fused pass that pools each layer's
selected tokens in place, then projects) vs a Python loop of per-layer einsums and masked means,
vs torch.stack + one einsum (the copy a naive batched version makes), and vs one plain read of
the hidden states (``hidden.sum()``, the memory-bandwidth roofline) measured in the same run.
Also the streaming ProjectionMonitor's overhead on a model's forward pass.

Issue targets (CPU, L=24, B=16, T=512, D=1024, P=8, float32): >= 5x faster than the loop,
within 2x of ``hidden.sum()``, no extra copy of the hidden states (peak memory column);
monitor overhead < 10% of a forward pass. GPU (bf16, L=32, B=16, T=1024, D=4096: 4.3 GB of
hidden states): >= 70% of HBM bandwidth, i.e. x roofline <= 1.43 against one read.
"""
from __future__ import annotations

import torch

from pyinterp.bench.backends import auto_backend, timed_backends
from pyinterp.bench.timing import Row, median_time, peak_memory


def loop_baseline(layers, vectors, mask):
    """The straightforward torch path: per layer, project every token, then a masked mean."""
    m = mask.to(torch.float32)
    denom = m.sum(1, keepdim=True)
    outs = []
    for l, h in enumerate(layers):
        u = vectors[l] / vectors[l].norm(dim=-1, keepdim=True)
        proj = torch.einsum("btd,pd->btp", h, u)
        outs.append((proj * m[..., None]).sum(1) / denom)
    return torch.stack(outs)


def stacked_baseline(layers, vectors, mask):
    """Batched but copying: stack the layers (a full copy of the hidden states), one einsum."""
    h = torch.stack(layers)
    m = mask.to(torch.float32)
    u = vectors / vectors.norm(dim=-1, keepdim=True)
    proj = torch.einsum("lbtd,lpd->lbtp", h, u)
    return (proj * m[None, :, :, None]).sum(2) / m.sum(1)[None, :, None]


def _padding_mask(B, T, device):
    """Left padding of 0..T/4 tokens, different per row (batched prompts of unequal length)."""
    pad = torch.arange(B, device=device) * (T // 4) // max(1, B - 1)
    return torch.arange(T, device=device)[None, :] >= pad[:, None]


def _project_rows(device, L, B, T, D, P, repeat, dtype=torch.float32):
    from pyinterp import ops

    g = torch.Generator(device=device).manual_seed(0)
    # allocated once, on the device (805 MB at the CPU size)
    hidden = torch.randn(L, B, T, D, generator=g, device=device).to(dtype)
    layers = list(hidden.unbind(0))  # views: the layout of per-layer residual-stream tensors
    vectors = torch.randn(L, P, D, generator=g, device=device).to(dtype)
    full = torch.ones(B, T, dtype=torch.bool, device=device)
    padded = _padding_mask(B, T, device)
    shape = f"L={L} B={B} T={T} D={D} P={P}"
    dname = str(dtype).replace("torch.", "")
    nbytes = hidden.numel() * hidden.element_size()
    rows = []

    roof = lambda: hidden.sum()  # noqa: E731
    t_roof = median_time(roof, device=device, repeat=repeat)
    rows.append(Row("persona_project", shape, dname, "hidden.sum() (one read: roofline)", t_roof,
                    bytes_moved=nbytes, peak_bytes=peak_memory(roof, device)))
    loop = lambda: loop_baseline(layers, vectors, full)  # noqa: E731
    t_loop = median_time(loop, device=device, warmup=1, repeat=max(3, repeat // 2))
    rows.append(Row("persona_project", shape, dname, "torch loop: per-layer einsum + masked mean",
                    t_loop, bytes_moved=nbytes, roofline_seconds=t_roof, peak_bytes=peak_memory(loop, device)))
    stack = lambda: stacked_baseline(layers, vectors, full)  # noqa: E731
    t_stack = median_time(stack, device=device, warmup=1, repeat=max(3, repeat // 2))
    rows.append(Row("persona_project", shape, dname, "torch.stack + one einsum (copies hidden)",
                    t_stack, bytes_moved=nbytes, roofline_seconds=t_roof,
                    peak_bytes=peak_memory(stack, device)))

    auto = auto_backend("persona_project", device.type)
    names = [auto] + [b for b in timed_backends("persona_project", device.type) if b != auto]
    for name in names:
        for label, mask, reduce, moved in (
            ("mean, all tokens", full, "mean", nbytes),
            ("mean, left-padded rows", padded, "mean", int(nbytes * padded.float().mean())),
            ("last token", None, "last", L * B * D * hidden.element_size()),
        ):
            fn = lambda: ops.persona_project(layers, vectors, mask, reduce, backend=name)  # noqa: E731
            t = median_time(fn, device=device, repeat=repeat)
            rows.append(Row("persona_project", shape, dname, f"pyinterp [{name}] {label}", t,
                            bytes_moved=moved, baseline="torch loop", baseline_seconds=t_loop,
                            roofline_seconds=t_roof, peak_bytes=peak_memory(fn, device),
                            extra={"hidden_bytes": nbytes, "vs_stack": t_stack / t}))
    return rows


def _monitor_rows(device, repeat, quick):
    """Forward pass of a small transformer with and without a ProjectionMonitor on every layer."""
    from pyinterp.models import Transformer, TransformerConfig
    from pyinterp.persona import ProjectionMonitor

    cfg = TransformerConfig(n_layers=4 if quick else 8, d_model=128 if quick else 256, n_heads=8,
                            d_vocab=4096, n_ctx=512, act_fn="gelu")
    model = Transformer(cfg).to(device).eval()
    B, T, P = (4, 128, 8) if quick else (8, 256, 8)
    tokens = torch.randint(0, cfg.d_vocab, (B, T), device=device)
    vectors = torch.randn(P, cfg.d_model, device=device)
    mon = ProjectionMonitor(model, vectors)
    shape = f"layers={cfg.n_layers} d={cfg.d_model} B={B} T={T} P={P}"

    @torch.no_grad()
    def plain():
        return model(tokens)

    @torch.no_grad()
    def monitored():
        mon.reset()
        with mon:
            return model(tokens)

    # Interleaved (plain, monitored) pairs so that machine load hits both alike.
    import statistics
    import time

    plain(), monitored()
    tp, tm = [], []
    for _ in range(max(5, repeat)):
        for fn, acc in ((plain, tp), (monitored, tm)):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            acc.append(time.perf_counter() - t0)
    t_plain, t_mon = statistics.median(tp), statistics.median(tm)
    return [
        Row("projection_monitor", shape, "float32", "forward pass", t_plain),
        Row("projection_monitor", shape, "float32", "forward pass + monitor (every layer)", t_mon,
            baseline="forward pass", baseline_seconds=t_plain,
            extra={"overhead": t_mon / t_plain - 1}),
    ]


def run(args) -> list:
    device = torch.device(args.device)
    repeat = 3 if args.quick else 7
    L, B, T, D, P = (8, 8, 256, 512, 8) if args.quick else (24, 16, 512, 1024, 8)
    rows = _project_rows(device, L, B, T, D, P, repeat)
    if device.type == "cuda":
        L, B, T, D = (8, 8, 512, 4096) if args.quick else (32, 16, 1024, 4096)
        rows += _project_rows(device, L, B, T, D, P, repeat, torch.bfloat16)
    rows += _monitor_rows(device, repeat, args.quick)
    return rows
