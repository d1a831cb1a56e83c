"""Training steps of the dictionary zoo: pyinterp's sparse-kernel modules vs the same maths in
dense torch (dense codes, dense decoders, autograd) and vs ``torch.compile`` of a sparse-gather
torch formulation (dense pre-activations, ``torch.topk``, ``F.embedding_bag`` decode); each
step is forward + backward + Adam. JumpReLU also vs SAELens's own JumpReLUTrainingSAE
(``training_forward_pass`` + backward + Adam) on the same batch and weights.

Issue 17 targets (CPU, 2 threads, float32, N=4096, d_in=512, d_sae=16384, k=32; crosscoder /
CLT: 4 layers, d_sae=8192 per layer): >= 3x dense and >= 1.5x compiled, <= 1/4 of the dense
peak memory; JumpReLU >= 3x SAELens.

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
from pyinterp.bench.timing import Row, interleaved_medians, peak_memory

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
    L = mod.n_layers
    if kind == "crosscoder":
        def loss(*xs):
            xn = torch.stack(xs) * mod.input_scale[:, None, None]
            pre = sum(xn[l] @ mod.W_enc[l] for l in range(L)) + mod.b_enc
            if sparse:
                v, i = torch.topk(pre, k, dim=-1)
                v = v.relu()
                rec = [_gather(v, i, mod.W_dec[l]) for l in range(L)]
            else:
                code = _topk_dense(pre, k)
                rec = [code @ mod.W_dec[l] for l in range(L)]
            return sum((rec[l] + mod.b_dec[l] - xn[l]).pow(2).sum(-1) for l in range(L)).mean()
        return loss

    def loss(*tensors):  # CLT
        xn = torch.stack(tensors[:L]) * mod.input_scale[:, None, None]
        yn = torch.stack(tensors[L:]) * mod.output_scale[:, None, None]
        codes = []
        for l in range(L):
            pre = xn[l] @ mod.W_enc[l] + mod.b_enc[l]
            if sparse:
                v, i = torch.topk(pre, k, dim=-1)
                codes.append((v.relu(), i))
            else:
                codes.append(_topk_dense(pre, k))
        total = 0
        for j in range(L):
            if sparse:
                y = sum(_gather(*codes[l], mod.decoder(l, j)) for l in range(j + 1))
            else:
                y = sum(codes[l] @ mod.decoder(l, j) for l in range(j + 1))
            total = total + (y + mod.b_dec[j] - yn[j]).pow(2).sum(-1)
        return total.mean()
    return loss


def train_step(params, loss, inputs):
    """One Adam step (gradients set to None between steps, as SAETrainer does)."""
    opt = torch.optim.Adam(params, lr=1e-5)

    def step():
        opt.zero_grad(set_to_none=True)
        loss(*inputs).backward()
        opt.step()
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
    opt = torch.optim.Adam(theirs.parameters(), lr=1e-5)
    inp = TrainStepInput(sae_in=x, coefficients={"l0": mod.cfg.l0_coefficient},
                         dead_neuron_mask=None, n_training_steps=0, is_logging_step=False)

    def step():
        opt.zero_grad(set_to_none=True)
        theirs.training_forward_pass(inp).loss.backward()
        opt.step()
    return step, sae_lens.__version__


def run(args) -> list[Row]:
    from pyinterp.bench.cases_sae import _visible_peaks

    _visible_peaks()  # large buffers are mmap'ed, so the RSS sampling sees each step's peak
    device = torch.device(getattr(args, "device", "cpu"))
    quick = getattr(args, "quick", False)
    s = QUICK if quick else FULL
    repeat = 3 if quick else 5
    kinds = getattr(args, "kinds", None) or KINDS
    rows = []
    for kind in kinds:
        mod, x = build(kind, s, device)
        backend = auto_backend("multi_decode" if kind != "jumprelu" else "jumprelu_select",
                               device.type)
        dense_mod, compiled_mod = copy.deepcopy(mod), copy.deepcopy(mod)
        ours = train_step(mod.parameters(), lambda *t: mod.loss(*t).total, x)
        dense = train_step(dense_mod.parameters(), torch_loss(kind, dense_mod, sparse=False), x)
        compiled = train_step(compiled_mod.parameters(),
                         torch.compile(torch_loss(kind, compiled_mod, sparse=kind != "jumprelu")),
                         x)
        fns = {"dense": dense, "compiled": compiled, "ours": ours}
        peer = None
        if kind == "jumprelu":
            try:
                fns["saelens"], peer = _saelens_jumprelu(copy.deepcopy(mod), x[0])
            except ImportError:
                pass
        compiled()  # compile outside the timed rounds
        t = interleaved_medians(fns, repeat, device=device)
        mem = {name: peak_memory(fn, device) for name, fn in fns.items()}
        # every implementation allocates the same parameter gradients (one per step): what
        # is left of the peak is the step's activations and temporaries
        grads = sum(p.numel() * p.element_size() for p in mod.parameters())
        shape = shape_of(kind, s)
        op = f"{kind}_train_step"
        act = {n: max(mem[n] - grads, 0) for n in ("ours", "dense")}
        extra = {"vs_compiled": t["compiled"] / t["ours"],
                 "memory_vs_dense": mem["ours"] / max(mem["dense"], 1),
                 "gradients_MiB": grads / 2**20, "activations_MiB": act["ours"] / 2**20,
                 "dense_activations_MiB": act["dense"] / 2**20,
                 "activations_vs_dense": act["ours"] / max(act["dense"], 1)}
        if kind == "jumprelu":
            with torch.no_grad():
                v, _ = mod.eval().encode(x[0])
            mod.train()
            extra["l0"] = float((v > 0).sum(-1).float().mean())
        comp = "torch.compile(dense)" if kind == "jumprelu" else "torch.compile(sparse gather)"
        rows += [
            Row(op, shape, "float32", "torch dense (same maths)", t["dense"], peak_bytes=mem["dense"]),
            Row(op, shape, "float32", comp, t["compiled"], peak_bytes=mem["compiled"]),
            Row(op, shape, "float32", f"pyinterp [{backend}]", t["ours"], baseline="torch dense",
                baseline_seconds=t["dense"], peak_bytes=mem["ours"], extra=extra),
        ]
        if peer is not None:
            rows.append(Row(op, shape, "float32", f"sae_lens {peer} JumpReLUTrainingSAE",
                            t["saelens"], peak_bytes=mem["saelens"]))
            rows.append(Row(op, shape, "float32", f"pyinterp [{backend}] vs sae_lens", t["ours"],
                            baseline="sae_lens", baseline_seconds=t["saelens"]))
    return rows
