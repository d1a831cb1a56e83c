"""Training steps of the dictionary zoo: pyinterp's sparse-kernel modules vs the same maths in
dense torch (dense codes, dense decoders, autograd) and vs ``torch.compile`` of a sparse-gather
torch formulation (dense pre-activations, ``torch.topk``, ``F.embedding_bag`` decode); each
step is forward + backward + Adam. JumpReLU also vs SAELens's own JumpReLUTrainingSAE
(``training_forward_pass`` + backward + Adam) on the same batch and weights.

Issue 17 targets (CPU, 2 threads, float32, N=4096, d_in=512, d_sae=16384, k=32; crosscoder /
CLT: 4 layers, d_sae=8192 per layer): >= 3x dense and >= 1.5x compiled, <= 1/4 of the dense
peak memory; JumpReLU >= 3x SAELens.

Peak memory: the growth of the process's resident memory during one step (sampled; glibc's
mmap threshold fixed so that every large buffer is visible), measured from the state between
steps, which is the same for every implementation: parameters, optimizer state and inputs,
no gradients (each step frees its gradients). It therefore counts the gradients, the
activations kept for backward, every temporary and the optimizer's temporaries. The pyinterp
rows are the module with SAETrainer's Adam after backward (the trainer's default) and with
``TrainConfig(optimizer_in_backward=True)``; the dense maths is timed with torch's Adam and
with the same optimizer in backward, so that the memory targets compare like with like.
``peak_breakdown`` lists what is alive at the peak (the profiler's allocation events).

JumpReLU has no fixed active count, so its "compiled" baseline is ``torch.compile`` of the
dense formulation (a data-dependent sparse gather does not compile into one graph). Its
thresholds are set from the batch so that L0 ~ k (the state of a trained dictionary; a
freshly initialised JumpReLU is dense, docs/decisions/sae-jumprelu-threshold-init.md).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from pyinterp.bench.backends import auto_backend
from pyinterp.bench.suite import Group
from pyinterp.bench.timing import Row
from pyinterp.ops.multi_decode import clt_decoder_offset

FULL = dict(N=4096, d_in=512, d_sae=16384, k=32, layers=4, d_layer=8192)
QUICK = dict(N=512, d_in=128, d_sae=2048, k=16, layers=2, d_layer=1024)
KINDS = ("jumprelu", "matryoshka", "transcoder", "crosscoder", "clt")


def shape_of(kind: str, s: dict) -> str:
    if kind in ("crosscoder", "clt"):
        return f"N={s['N']} L={s['layers']} d_in={s['d_in']} d_sae={s['d_layer']}/layer k={s['k']}"
    return f"N={s['N']} d_in={s['d_in']} d_sae={s['d_sae']} k={s['k']}"


# ----------------------------------------------------------------------------- the modules
def build(kind: str, s: dict, device="cpu"):
    """(pyinterp dictionary, its loss inputs) for ``kind`` at sizes ``s``; random weights of a
    trained-like scale, inputs N(0, 1)."""
    from pyinterp import sae

    N, d, m, k, L, ml = s["N"], s["d_in"], s["d_sae"], s["k"], s["layers"], s["d_layer"]
    g = torch.Generator().manual_seed(0)
    rnd = lambda *shape: torch.randn(*shape, generator=g).to(device)  # noqa: E731
    if kind == "jumprelu":
        mod = sae.JumpReLUSAE(d, m, sparsity_loss="step", l0_coefficient=1e-3, seed=0,
                              device=device)
        x = (rnd(N, d),)
        from pyinterp.sae.jumprelu_init import init_thresholds_to_l0
        init_thresholds_to_l0(mod.threshold, x[0], mod.W_enc, mod.b_enc, mod.b_dec, k)
    elif kind == "matryoshka":
        mod = sae.MatryoshkaBatchTopKSAE(d, m, k=k, matryoshka_widths=[m // 16, m // 4, m], seed=0,
                                         device=device)
        x = (rnd(N, d),)
    elif kind == "transcoder":
        mod = sae.Transcoder(d, m, activation="topk", k=k, skip=True, seed=0, device=device)
        x = (rnd(N, d), rnd(N, d))
    elif kind == "crosscoder":
        mod = sae.Crosscoder(L, d, ml, activation="topk", k=k, seed=0, device=device)
        x = tuple(rnd(N, d) for _ in range(L))
    else:
        mod = sae.CrossLayerTranscoder(L, d, ml, activation="topk", k=k, seed=0, device=device)
        x = tuple(rnd(N, d) for _ in range(2 * L))
    return mod.train(), x


class _DenseStep(torch.autograd.Function):
    """SAELens's JumpReLU straight-through estimator on a dense pre-activation."""

    @staticmethod
    def forward(ctx, pre, thr, eps):
        ctx.save_for_backward(pre, thr)
        ctx.eps = eps
        return pre * (pre > thr)

    @staticmethod
    def backward(ctx, g):
        pre, thr = ctx.saved_tensors
        band = ((pre - thr).abs() < ctx.eps / 2).to(g.dtype)
        return g * (pre > thr), -(thr / ctx.eps * band * g).sum(0), None


class _DenseL0(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, thr, eps):
        ctx.save_for_backward(pre, thr)
        ctx.eps = eps
        return (pre > thr).to(pre.dtype).sum(-1)

    @staticmethod
    def backward(ctx, g):
        pre, thr = ctx.saved_tensors
        band = ((pre - thr).abs() < ctx.eps / 2).to(g.dtype)
        return None, -(band * g[:, None] / ctx.eps).sum(0), None


def _topk_dense(pre, k):
    v, i = torch.topk(pre, k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, i, v.relu())


def _batchtopk_dense(pre, k):
    act = pre.relu()
    v, i = torch.topk(act.reshape(-1), k * pre.shape[0])
    return torch.zeros_like(act.reshape(-1)).scatter(0, i, v).view_as(pre)


def _gather(v, i, W):
    """sum_j v[n, j] W[i[n, j]]: torch's sparse gather (no (N, k, d) tensor)."""
    return F.embedding_bag(i, W, per_sample_weights=v, mode="sum")


def torch_loss(kind: str, mod, sparse: bool):
    """The same maths as ``mod.loss(...).total`` in plain torch on ``mod``'s parameters: dense
    codes and decoders (``sparse=False``) or the sparse-gather formulation (``sparse=True``)."""
    k = int(mod.cfg.k) if mod.cfg.k is not None else None

    def sae_like(x):
        xn = x * mod.input_scale
        pre = (xn - mod.b_dec) @ mod.W_enc + mod.b_enc
        return xn, pre

    if kind == "jumprelu":
        def loss(x):
            xn, pre = sae_like(x)
            f = _DenseStep.apply(pre, mod.threshold, mod.cfg.bandwidth)
            x_hat = f @ mod.W_dec + mod.b_dec
            l0 = _DenseL0.apply(pre, mod.threshold, mod.cfg.bandwidth)
            return (x_hat - xn).pow(2).sum(-1).mean() + mod.cfg.l0_coefficient * l0.mean()
        return loss
    if kind == "matryoshka":
        widths = mod.cfg.matryoshka_widths

        def loss(x):
            xn, pre = sae_like(x)
            if sparse:  # the batch's top k*N entries, grouped by row, one gather per prefix
                n, m_all = pre.shape
                v, fi = torch.topk(pre.relu().reshape(-1), k * n)
                order = torch.argsort(fi)
                v, fi = v[order], fi[order]
                rows = torch.div(fi, m_all, rounding_mode="floor")
                cols = fi - rows * m_all
                offsets = F.pad(torch.cumsum(torch.bincount(rows, minlength=n), 0), (1, 0))
                total = 0
                for m in widths:
                    rec = F.embedding_bag(cols, mod.W_dec, offsets, mode="sum",
                                          per_sample_weights=v * (cols < m),
                                          include_last_offset=True)
                    total = total + (rec + mod.b_dec - xn).pow(2).sum(-1).mean()
                return total
            code = _batchtopk_dense(pre, k)
            return sum((code[:, :m] @ mod.W_dec[:m] + mod.b_dec - xn).pow(2).sum(-1).mean()
                       for m in widths)
        return loss
    if kind == "transcoder":
        def loss(x, y):
            xn, yn = x * mod.input_scale, y * mod.output_scale
            pre = xn @ mod.W_enc + mod.b_enc
            if sparse:
                v, i = torch.topk(pre, k, dim=-1)
                y_hat = _gather(v.relu(), i, mod.W_dec)
            else:
                y_hat = _topk_dense(pre, k) @ mod.W_dec
            y_hat = y_hat + mod.b_dec + xn @ mod.W_skip.T
            return (y_hat - yn).pow(2).sum(-1).mean()
        return loss
    # Stacked parameters are split with unbind, never indexed per layer: autograd then builds
    # each gradient once instead of zero-filling a full-size one per use (the modules do the
    # same); the crosscoder encoder is one GEMM over the concatenated layers.
    L = mod.n_layers
    if kind == "crosscoder":
        def loss(*xs):
            xn = torch.stack(xs, 1) * mod.input_scale[:, None]  # (N, L, d)
            n, _, d = xn.shape
            pre = xn.reshape(n, L * d) @ mod.W_enc.reshape(L * d, -1) + mod.b_enc
            W_dec = list(mod.W_dec)  # one (d_sae, d) parameter per layer
            if sparse:
                v, i = torch.topk(pre, k, dim=-1)
                v = v.relu()
                rec = [_gather(v, i, W_dec[l]) for l in range(L)]
            else:
                code = _topk_dense(pre, k)
                rec = [code @ W_dec[l] for l in range(L)]
            return sum((rec[l] + mod.b_dec[l] - xn[:, l]).pow(2).sum(-1) for l in range(L)).mean()
        return loss

    def loss(*tensors):  # CLT
        xn = torch.stack(tensors[:L]) * mod.input_scale[:, None, None]
        yn = torch.stack(tensors[L:]) * mod.output_scale[:, None, None]
        W_enc, b_enc, W_dec = mod.W_enc.unbind(0), mod.b_enc.unbind(0), mod.W_dec.unbind(0)
        codes = []
        for l in range(L):
            pre = xn[l] @ W_enc[l] + b_enc[l]
            if sparse:
                v, i = torch.topk(pre, k, dim=-1)
                codes.append((v.relu(), i))
            else:
                codes.append(_topk_dense(pre, k))
        total = 0
        for j in range(L):
            dec = [W_dec[clt_decoder_offset(L, l) + j - l] for l in range(j + 1)]  # W^{l->j}
            if sparse:
                y = sum(_gather(*codes[l], dec[l]) for l in range(j + 1))
            else:
                y = sum(codes[l] @ dec[l] for l in range(j + 1))
            total = total + (y + mod.b_dec[j] - yn[j]).pow(2).sum(-1)
        return total.mean()
    return loss


def train_step(params, loss, inputs, optimizer: str = "torch"):
    """One training step: forward, backward, Adam. Its gradients are freed before it returns
    (as SAETrainer does), so every implementation starts a step from the same state
    (parameters + optimizer state) and its peak counts everything the step allocates.

    optimizer: "torch" (``torch.optim.Adam``, what a torch user writes), "pyinterp" (the
    trainer's Adam, pyinterp.sae.optim: torch's update bit for bit without parameter-sized
    temporaries) or "pyinterp_in_backward" (the same, fused into backward as
    ``TrainConfig(optimizer_in_backward=True)``: each gradient freed once its parameter is
    updated)."""
    from pyinterp.sae.optim import Adam, in_backward

    params = list(params)
    opt = torch.optim.Adam(params, lr=1e-5) if optimizer == "torch" else Adam(params, lr=1e-5)
    if optimizer == "pyinterp_in_backward":
        def step():
            with in_backward(opt, params):
                loss(*inputs).backward()
        return step

    def step():
        loss(*inputs).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def _saelens_jumprelu(mod, x):
    """SAELens's JumpReLUTrainingSAE with ``mod``'s weights and its training step on x."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import sae_lens
        from sae_lens.saes.sae import TrainStepInput
    cfg = sae_lens.JumpReLUTrainingSAEConfig(d_in=mod.d_in, d_sae=mod.d_sae,
                                             jumprelu_bandwidth=mod.cfg.bandwidth,
                                             l0_coefficient=mod.cfg.l0_coefficient)
    theirs = sae_lens.JumpReLUTrainingSAE(cfg)
    with torch.no_grad():
        for n in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
            getattr(theirs, n).copy_(getattr(mod, n))
    inp = TrainStepInput(sae_in=x, coefficients={"l0": mod.cfg.l0_coefficient},
                         dead_neuron_mask=None, n_training_steps=0, is_logging_step=False)
    return train_step(theirs.parameters(), lambda: theirs.training_forward_pass(inp).loss, ())


def _has_sae_lens() -> bool:
    import importlib.util

    return importlib.util.find_spec("sae_lens") is not None


# ----------------------------------------------------------------------------- the cases
GROUP_NAMES = {"jumprelu": "JumpReLUTrainStep", "matryoshka": "MatryoshkaTrainStep",
               "transcoder": "TranscoderTrainStep", "crosscoder": "CrosscoderTrainStep",
               "clt": "CLTTrainStep"}
# torch_dense: the dense maths with torch.optim.Adam; torch_dense_in_backward: the same with
# pyinterp's optimizer in backward (what the dense step gets from the same trick);
# torch_compile: torch.compile of the sparse-gather formulation (JumpReLU: of the dense one);
# pyinterp: the module with the trainer's Adam after backward (SAETrainer's default);
# pyinterp_in_backward: the module with TrainConfig(optimizer_in_backward=True).
IMPLS = ("torch_dense", "torch_dense_in_backward", "torch_compile", "pyinterp",
         "pyinterp_in_backward")


class _Calls(dict):
    """{impl: step} of one kind, with the pyinterp module and its inputs (for the table)."""

    module: torch.nn.Module
    inputs: tuple


def _calls(kind: str, s: dict, device) -> _Calls:
    mod, x = build(kind, s, device)
    fns = _Calls()
    for impl in IMPLS:  # each implementation trains its own copy of the same weights
        m = copy.deepcopy(mod)
        if impl.startswith("pyinterp"):
            loss = (lambda *t, m=m: m.loss(*t).total)
        elif impl == "torch_compile":
            loss = torch.compile(torch_loss(kind, m, sparse=kind != "jumprelu"))
        else:
            loss = torch_loss(kind, m, sparse=False)
        opt = {"torch_dense_in_backward": "pyinterp_in_backward", "pyinterp": "pyinterp",
               "pyinterp_in_backward": "pyinterp_in_backward"}.get(impl, "torch")
        fns[impl] = train_step(m.parameters(), loss, x, opt)
    if kind == "jumprelu" and _has_sae_lens():
        fns["sae_lens"] = _saelens_jumprelu(copy.deepcopy(mod), x[0])
    fns.module, fns.inputs = mod, x
    return fns


def groups(device, quick=False) -> list[Group]:
    """One group per kind: its training step in every implementation (asv: the
    ``<Kind>TrainStep`` classes of benchmarks/benchmarks/dictionaries.py)."""
    s = QUICK if quick else FULL
    out = []
    for kind in KINDS:
        impls = IMPLS + (("sae_lens",) if kind == "jumprelu" and _has_sae_lens() else ())
        out.append(Group(GROUP_NAMES[kind], impls, lambda kind=kind: _calls(kind, s, device),
                         grad=True, repeat=3 if quick else 5, timeout=900,
                         info={"kind": kind, "shape": shape_of(kind, s), "dtype": "float32"}))
    return out


def peak_breakdown(fn, top: int = 6) -> list:
    """What is alive at the peak of one call of ``fn`` (CPU): [(MiB, op that allocated it)],
    largest first, from the profiler's allocation events; None where the profiler cannot."""
    try:
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        allocs = []

        def walk(e, ops):
            if e.typed[0] == _EventType.Allocation:
                allocs.append((e.start_time_ns, e.typed[1].ptr, e.typed[1].alloc_size, ops))
            for c in e.children:
                walk(c, ops + [e.name] if not e.name.startswith("[") else ops)
        for root in prof.profiler.kineto_results.experimental_event_tree():
            walk(root, [])
    except Exception:  # a private profiler API: the breakdown is optional
        return None
    live, cur, peak, at_peak = {}, 0, 0, {}
    for _, ptr, size, ops in sorted(allocs, key=lambda a: a[0]):
        if size > 0:
            live[ptr] = (size, ops)
            cur += size
        elif ptr in live:
            cur -= live.pop(ptr)[0]
        if cur > peak:
            peak, at_peak = cur, dict(live)
    named = sorted(((size, " > ".join(ops[-2:]) or "?") for size, ops in at_peak.values()),
                   reverse=True)
    rest = sum(size for size, _ in named[top:])
    return [(round(sz / 2**20, 1), op) for sz, op in named[:top]] + [(round(rest / 2**20, 1), "rest")]


def run(args) -> list[Row]:
    from pyinterp.bench.cases_sae import _visible_peaks

    _visible_peaks()  # large buffers are mmap'ed, so the RSS sampling sees each step's peak
    device = torch.device(getattr(args, "device", "cpu"))
    quick = getattr(args, "quick", False)
    kinds = getattr(args, "kinds", None) or KINDS
    rows = []
    for group in groups(device, quick):
        kind = group.info["kind"]
        if kind not in kinds:
            continue
        fns, t = group.time(device)  # round-robin; the warm-up round compiles
        mem = {name: group.peak(fn, device) for name, fn in fns.items()}
        mod = fns.module
        backend = auto_backend("multi_decode" if kind != "jumprelu" else "jumprelu_select",
                               device.type)
        shape, op, MiB = group.info["shape"], f"{kind}_train_step", 2**20
        sizes = [p.numel() * p.element_size() for p in mod.parameters()]
        extra = {"vs_compiled": t["torch_compile"] / t["pyinterp_in_backward"],
                 "memory_vs_dense": mem["pyinterp_in_backward"] / max(mem["torch_dense"], 1),
                 "memory_vs_dense_in_backward":
                     mem["pyinterp_in_backward"] / max(mem["torch_dense_in_backward"], 1),
                 "gradients_MiB": sum(sizes) / MiB, "largest_gradient_MiB": max(sizes) / MiB}
        if device.type == "cpu":
            extra["at_peak"] = peak_breakdown(fns["pyinterp_in_backward"])
            extra["dense_at_peak"] = peak_breakdown(fns["torch_dense"])
        if kind == "jumprelu":
            with torch.no_grad():
                v, _ = mod.eval().encode(fns.inputs[0])
            mod.train()
            extra["l0"] = float((v > 0).sum(-1).float().mean())
        comp = "torch.compile(dense)" if kind == "jumprelu" else "torch.compile(sparse gather)"
        ours = f"pyinterp [{backend}]"
        rows += [
            Row(op, shape, "float32", "torch dense (same maths), torch Adam", t["torch_dense"],
                peak_bytes=mem["torch_dense"]),
            Row(op, shape, "float32", "torch dense, pyinterp Adam in backward",
                t["torch_dense_in_backward"], peak_bytes=mem["torch_dense_in_backward"]),
            Row(op, shape, "float32", f"{comp}, torch Adam", t["torch_compile"],
                peak_bytes=mem["torch_compile"]),
            Row(op, shape, "float32", f"{ours}, Adam after backward", t["pyinterp"],
                baseline="torch dense", baseline_seconds=t["torch_dense"],
                peak_bytes=mem["pyinterp"],
                extra={"vs_compiled": t["torch_compile"] / t["pyinterp"],
                       "memory_vs_dense": mem["pyinterp"] / max(mem["torch_dense"], 1)}),
            Row(op, shape, "float32", f"{ours}, optimizer in backward", t["pyinterp_in_backward"],
                baseline="torch dense", baseline_seconds=t["torch_dense"],
                peak_bytes=mem["pyinterp_in_backward"], extra=extra),
        ]
        if "sae_lens" in fns:
            import sae_lens

            rows.append(Row(op, shape, "float32", f"sae_lens {sae_lens.__version__} "
                            "JumpReLUTrainingSAE, torch Adam", t["sae_lens"],
                            peak_bytes=mem["sae_lens"]))
            rows.append(Row(op, shape, "float32", f"{ours}, optimizer in backward, vs sae_lens",
                            t["pyinterp_in_backward"], baseline="sae_lens",
                            baseline_seconds=t["sae_lens"]))
    return rows
