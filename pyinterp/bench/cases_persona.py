"""Persona projections: pyinterp.ops.persona_project (one fused pass that pools each layer's
selected tokens in place, then projects) vs a Python loop of per-layer einsums and masked means,
vs torch.stack + one einsum (the copy a naive batched version makes), and vs one plain read of
the hidden states (``hidden.sum()``, the memory-bandwidth roofline) measured in the same run.
Also the streaming ProjectionMonitor's overhead on a model's forward pass.

Issue targets (CPU, L=24, B=16, T=512, D=1024, P=8, float32): >= 5x faster than the loop,
within 2x of ``hidden.sum()``, no extra copy of the hidden states (peak memory column);
monitor overhead < 10% of a forward pass. GPU (bf16, L=32, B=16, T=1024, D=4096: 4.3 GB of
hidden states): >= 70% of HBM bandwidth, i.e. x roofline <= 1.43 against one read.

The loop is also timed as ``torch.compile(loop_baseline, dynamic=False)`` (compiled in the
warm-up round; one graph over all layers), on CPU and GPU. The monitor overhead has no compiled
baseline: it is a ratio of one model's own forward passes, not a torch baseline of ours.
"""
from __future__ import annotations

import torch

from pyinterp.bench.backends import auto_backend, timed_backends
from pyinterp.bench.suite import Group
from pyinterp.bench.timing import Row, peak_memory

# pyinterp's variants, per backend: (suffix, row label, mask, reduce)
VARIANTS = (("mean", "mean, all tokens", "full", "mean"),
            ("mean_padded", "mean, left-padded rows", "padded", "mean"),
            ("last", "last token", None, "last"))


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


def _project_inputs(L, B, T, D, P, device, dtype=torch.float32):
    g = torch.Generator(device=device).manual_seed(0)
    # allocated once, on the device (805 MB at the CPU size)
    hidden = torch.randn(L, B, T, D, generator=g, device=device).to(dtype)
    vectors = torch.randn(L, P, D, generator=g, device=device).to(dtype)
    masks = {"full": torch.ones(B, T, dtype=torch.bool, device=device),
             "padded": _padding_mask(B, T, device), None: None}
    return hidden, vectors, masks


def _project_calls(size, device, names, dtype=torch.float32):
    from pyinterp import ops

    hidden, vectors, masks = _project_inputs(*size, device, dtype)
    layers = list(hidden.unbind(0))  # views: the layout of per-layer residual-stream tensors
    full = masks["full"]
    loop_compiled = torch.compile(loop_baseline, dynamic=False)
    fns = {"hidden_sum": lambda: hidden.sum(),
           "torch_loop": lambda: loop_baseline(layers, vectors, full),
           "torch_compile": lambda: loop_compiled(layers, vectors, full),
           "torch_stack": lambda: stacked_baseline(layers, vectors, full)}
    for name in names:
        for suffix, _, mask, reduce in VARIANTS:
            fns[f"{name}_{suffix}"] = (lambda m=masks[mask], r=reduce, name=name:
                                       ops.persona_project(layers, vectors, m, r, backend=name))
    return fns


def _monitor_calls(cfg_size, device):
    """Forward pass of a small transformer with and without a ProjectionMonitor on every layer."""
    from pyinterp.models import Transformer, TransformerConfig
    from pyinterp.persona import ProjectionMonitor

    n_layers, d_model, B, T, P = cfg_size
    cfg = TransformerConfig(n_layers=n_layers, d_model=d_model, n_heads=8, d_vocab=4096, n_ctx=512,
                            act_fn="gelu")
    model = Transformer(cfg).to(device).eval()
    tokens = torch.randint(0, cfg.d_vocab, (B, T), device=device)
    mon = ProjectionMonitor(model, torch.randn(P, cfg.d_model, device=device))

    def monitored():
        mon.reset()
        with mon:
            return model(tokens)

    return {"forward": lambda: model(tokens), "forward_monitored": monitored}


def _sizes(quick):
    project = (8, 8, 256, 512, 8) if quick else (24, 16, 512, 1024, 8)
    monitor = (4, 128, 4, 128, 8) if quick else (8, 256, 8, 256, 8)
    return project, monitor


def _names(device):
    auto = auto_backend("persona_project", device.type)
    return [auto] + [b for b in timed_backends("persona_project", device.type) if b != auto]


def groups(device, quick=False) -> list[Group]:
    repeat = 3 if quick else 7
    project, monitor = _sizes(quick)
    names = _names(device)
    impls = ("hidden_sum", "torch_loop", "torch_compile", "torch_stack",
             *(f"{n}_{v[0]}" for n in names for v in VARIANTS))
    out = [Group("PersonaProject", impls, lambda: _project_calls(project, device, names),
                 peakmem=True, repeat=repeat, timeout=900,
                 info={"LBTDP": project, "dtype": "float32"})]
    if device.type == "cuda":  # 4.3 GB of bf16 hidden states against one read of them
        big = (8, 8, 512, 4096, 8) if quick else (32, 16, 1024, 4096, 8)
        out.append(Group("PersonaProjectBF16", impls,
                         lambda: _project_calls(big, device, names, torch.bfloat16),
                         repeat=repeat, info={"LBTDP": big, "dtype": "bfloat16"}))
    out.append(Group("MonitorOverhead", ("forward", "forward_monitored"),
                     lambda: _monitor_calls(monitor, device), repeat=max(5, repeat),
                     info={"layers_d_B_T_P": monitor}))
    return out


def _project_rows(group, device) -> list[Row]:
    L, B, T, D, P = group.info["LBTDP"]
    dname = group.info["dtype"]
    esz = torch.empty((), dtype=getattr(torch, dname)).element_size()
    shape = f"L={L} B={B} T={T} D={D} P={P}"
    nbytes = L * B * T * D * esz
    padded_share = float(_padding_mask(B, T, device).float().mean())
    fns, t = group.time(device)
    peak = {n: peak_memory(fn, device) for n, fn in fns.items()}
    t_roof, t_loop, t_stack = t["hidden_sum"], t["torch_loop"], t["torch_stack"]
    rows = [
        Row("persona_project", shape, dname, "hidden.sum() (one read: roofline)", t_roof,
            bytes_moved=nbytes, peak_bytes=peak["hidden_sum"]),
        Row("persona_project", shape, dname, "torch loop: per-layer einsum + masked mean",
            t_loop, bytes_moved=nbytes, roofline_seconds=t_roof, peak_bytes=peak["torch_loop"]),
        Row("persona_project", shape, dname, "torch.compile: per-layer loop", t["torch_compile"],
            bytes_moved=nbytes, baseline="torch loop", baseline_seconds=t_loop,
            roofline_seconds=t_roof, peak_bytes=peak["torch_compile"]),
        Row("persona_project", shape, dname, "torch.stack + one einsum (copies hidden)",
            t_stack, bytes_moved=nbytes, roofline_seconds=t_roof, peak_bytes=peak["torch_stack"]),
    ]
    moved = {"mean": nbytes, "mean_padded": int(nbytes * padded_share), "last": L * B * D * esz}
    for name in _names(device):
        for suffix, label, _, _ in VARIANTS:
            key = f"{name}_{suffix}"
            rows.append(Row("persona_project", shape, dname, f"pyinterp [{name}] {label}", t[key],
                            bytes_moved=moved[suffix], baseline="torch loop", baseline_seconds=t_loop,
                            roofline_seconds=t_roof, peak_bytes=peak[key],
                            extra={"hidden_bytes": nbytes, "vs_stack": t_stack / t[key],
                                   "x_compile": t["torch_compile"] / t[key]}))
    return rows


def run(args) -> list:
    device = torch.device(args.device)
    *project_groups, monitor_g = groups(device, args.quick)
    rows = []
    for group in project_groups:
        rows += _project_rows(group, device)
    _, t = monitor_g.time(device)
    n_layers, d_model, B, T, P = monitor_g.info["layers_d_B_T_P"]
    shape = f"layers={n_layers} d={d_model} B={B} T={T} P={P}"
    rows += [
        Row("projection_monitor", shape, "float32", "forward pass", t["forward"]),
        Row("projection_monitor", shape, "float32", "forward pass + monitor (every layer)",
            t["forward_monitored"], baseline="forward pass", baseline_seconds=t["forward"],
            extra={"overhead": t["forward_monitored"] / t["forward"] - 1}),
    ]
    return rows
