"""pyinterp as a drop-in backend of peer libraries, each against the unchanged peer in the
same run:

- SAELens training SAEs (TopK, BatchTopK, JumpReLU, Standard): one step of SAELens's trainer
  sequence (``training_forward_pass``, backward, clip to 1, Adam) plain vs after
  ``pyinterp.sae.accelerate``. Issue 19 targets: TopK >= 2x, JumpReLU/Standard >= 1.5x, never
  slower. Standard/JumpReLU codes are set to a trained SAE's sparsity (L0 = 64 of 16384).
- SAELens inference Standard/JumpReLU SAEs: dense ``encode`` and ``forward`` (never slower).
- Activation collection of a layer-0 hook of a 4-layer model: ``pyinterp.sae.stream`` (stops
  after block 0) vs the whole forward's cache.
- TransformerLens SoLU-LN models: forward and training step before/after
  ``pyinterp.integrations.transformer_lens.apply``.
"""
from __future__ import annotations

import copy
import warnings

import torch

from pyinterp.bench.suite import Group
from pyinterp.bench.timing import Row

FULL = (4096, 512, 16384)
QUICK = (1024, 256, 4096)
L0 = 64  # active latents per row for the Standard/JumpReLU codes (a trained SAE's sparsity)
K = 32


def _sae_lens():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import sae_lens
        return sae_lens
    except ImportError:
        return None


@torch.no_grad()
def _sparsify(sae, x, l0: int, threshold: float = 0.0) -> None:
    """b_enc such that each latent fires on l0/d_sae of the rows of x (so ~l0 per row)."""
    pre = sae.process_sae_in(x) @ sae.W_enc
    n = pre.shape[0]
    kth = max(1, n - max(1, round(n * l0 / pre.shape[1])))
    sae.b_enc.copy_(threshold - pre.kthvalue(kth, dim=0).values)


def _training_saes(sl, kind, d_in, d_sae, x):
    cfg = dict(d_in=d_in, d_sae=d_sae)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "topk":
            sae = sl.TopKTrainingSAE(sl.TopKTrainingSAEConfig(k=K, **cfg))
        elif kind == "batchtopk":
            sae = sl.BatchTopKTrainingSAE(sl.BatchTopKTrainingSAEConfig(k=K, **cfg))
        elif kind == "jumprelu":
            sae = sl.JumpReLUTrainingSAE(sl.JumpReLUTrainingSAEConfig(**cfg))
        else:
            sae = sl.StandardTrainingSAE(sl.StandardTrainingSAEConfig(**cfg))
    if kind in ("jumprelu", "standard"):
        _sparsify(sae, x, L0, 0.01 if kind == "jumprelu" else 0.0)
    return sae, copy.deepcopy(sae)


def _train_step(sae, x, dead):
    from sae_lens.saes.sae import TrainStepInput

    coeffs = {n: getattr(c, "value", c) for n, c in sae.get_coefficients().items()}
    opt = torch.optim.Adam(sae.parameters(), lr=1e-6)

    def step():
        out = sae.training_forward_pass(TrainStepInput(
            sae_in=x, coefficients=coeffs, dead_neuron_mask=dead, n_training_steps=0,
            is_logging_step=False))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    return step


TRAIN_CASES = (("topk", None), ("topk", 0.1), ("batchtopk", None), ("jumprelu", None),
               ("standard", None))


def _saelens_train_calls(sl, kind, dead_share, size, device) -> dict:
    from pyinterp.sae import accelerate

    N, d_in, d_sae = size
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, d_in, generator=gen).to(device)
    plain, fast = _training_saes(sl, kind, d_in, d_sae, x)
    plain.to(device), fast.to(device)
    accelerate(fast)
    dead = None
    if dead_share:
        dead = torch.rand(d_sae, generator=gen).to(device) < dead_share
    return {"sae_lens": _train_step(plain, x, dead), "accelerated": _train_step(fast, x, dead)}


def _saelens_inference_calls(sl, kind, method, size, device) -> dict:
    from pyinterp.sae import accelerate

    N, d_in, d_sae = size
    x = torch.randn(N, d_in, generator=torch.Generator().manual_seed(1)).to(device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "standard":
            plain = sl.StandardSAE(sl.StandardSAEConfig(d_in=d_in, d_sae=d_sae))
        else:
            plain = sl.JumpReLUSAE(sl.JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae))
    if kind == "jumprelu":
        with torch.no_grad():
            plain.threshold.fill_(0.01)
    _sparsify(plain, x, L0, 0.01 if kind == "jumprelu" else 0.0)
    plain.to(device)
    fast = accelerate(copy.deepcopy(plain))
    return {name: (lambda m=m: getattr(m, method)(x))
            for name, m in (("sae_lens", plain), ("accelerated", fast))}


def _collection_calls(quick, device) -> dict:
    from pyinterp.models import Transformer, TransformerConfig
    from pyinterp.sae.store import activation_fn

    d = 256 if quick else 512
    model = Transformer(TransformerConfig(n_layers=4, d_model=d, n_heads=8, d_vocab=4096, n_ctx=256,
                                          act_fn="gelu")).to(device).eval()
    tokens = torch.randint(0, 4096, (8 if quick else 16, 256), generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(device)
    early = activation_fn(model, [COLLECT_HOOK])
    return {"run_with_cache": lambda: model.run_with_cache(tokens, names_filter=[COLLECT_HOOK]),
            "stream": lambda: early(tokens)}


COLLECT_HOOK = "blocks.0.hook_resid_post"


def _transformer_lens():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import transformer_lens as tl
        return tl
    except ImportError:
        return None


def _tl_size(quick):
    return (256, 2, 4, 128) if quick else (512, 4, 8, 256)  # d_model, layers, batch, context


def _tl_solu_calls(quick, train, device) -> dict:
    """A TransformerLens SoLU-LN model: forward or training step, plain vs apply()."""
    from pyinterp.integrations import transformer_lens as ptl

    tl = _transformer_lens()
    d, L, B, T = _tl_size(quick)
    cfg = tl.HookedTransformerConfig(n_layers=L, d_model=d, n_heads=8, d_head=d // 8, d_mlp=4 * d,
                                     d_vocab=4096, n_ctx=T, act_fn="solu_ln", normalization_type="LN",
                                     seed=0, device=str(device))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain, fast = tl.HookedTransformer(cfg), tl.HookedTransformer(cfg)
    fast.load_state_dict(plain.state_dict())
    ptl.apply(fast)
    tokens = torch.randint(0, 4096, (B, T), generator=torch.Generator().manual_seed(0)).to(device)

    def step(m):
        opt = torch.optim.Adam(m.parameters(), lr=1e-6)

        def f():
            opt.zero_grad(set_to_none=True)
            m(tokens, return_type="loss").backward()
            opt.step()
        return f
    make = step if train else (lambda m: (lambda: m(tokens)))
    return {"transformer_lens": make(plain), "applied": make(fast)}


def groups(device, quick=False) -> list[Group]:
    """Each case's plain peer and its pyinterp-accelerated twin (asv:
    benchmarks/benchmarks/integrations.py). info: op, shape, and the two rows' labels."""
    repeat = 3 if quick else 5
    size = QUICK if quick else FULL
    N, d_in, d_sae = size
    pair = ("sae_lens", "accelerated")
    out = [Group("CollectActivations", ("run_with_cache", "stream"),
                 lambda: _collection_calls(quick, device), repeat=repeat,
                 info={"op": "collect_activations",
                       "shape": f"4 layers d_model={256 if quick else 512} B={8 if quick else 16} "
                                f"T=256, hook {COLLECT_HOOK}",
                       "labels": ("run_with_cache (whole forward)",
                                  "pyinterp.sae.stream (stops after block 0)"),
                       "baseline": "whole forward"})]
    tl = _transformer_lens()
    if tl is not None:
        d, L, B, T = _tl_size(quick)
        labels = (f"transformer_lens {getattr(tl, '__version__', '')}".strip(),
                  "integrations.transformer_lens.apply")
        for name, train in (("TLSoLULNForward", False), ("TLSoLULNTrainStep", True)):
            out.append(Group(name, ("transformer_lens", "applied"),
                             lambda train=train: _tl_solu_calls(quick, train, device), grad=train,
                             repeat=repeat,
                             info={"op": "tl_solu_ln_train_step" if train else "tl_solu_ln_forward",
                                   "shape": f"L={L} d_model={d} d_mlp={4 * d} B={B} T={T}",
                                   "labels": labels, "baseline": "transformer_lens"}))
    sl = _sae_lens()
    if sl is not None:
        labels = (f"sae_lens {sl.__version__}", "accelerate(sae_lens)")
        for kind, dead_share in TRAIN_CASES:
            code = f"k={K}" if kind in ("topk", "batchtopk") else f"L0~{L0}"
            shape = f"N={N} d_in={d_in} d_sae={d_sae} {code}"
            name = f"SAELens{kind.capitalize()}TrainStep"
            if dead_share:
                shape += f" dead={dead_share:.0%}"
                name = f"SAELens{kind.capitalize()}Dead{round(100 * dead_share)}TrainStep"
            out.append(Group(name, pair,
                             lambda kind=kind, share=dead_share:
                             _saelens_train_calls(sl, kind, share, size, device),
                             grad=True, repeat=repeat, timeout=900,
                             info={"op": f"saelens_{kind}_train_step", "shape": shape,
                                   "labels": labels, "baseline": "sae_lens"}))
        for kind in ("standard", "jumprelu"):
            for method in ("encode", "forward"):
                out.append(Group(f"SAELens{kind.capitalize()}{method.capitalize()}", pair,
                                 lambda kind=kind, method=method:
                                 _saelens_inference_calls(sl, kind, method, size, device),
                                 repeat=repeat,
                                 info={"op": f"saelens_{kind}_{method}",
                                       "shape": f"N={N} d_in={d_in} d_sae={d_sae} L0~{L0}",
                                       "labels": labels, "baseline": "sae_lens"}))
    return out


def run(args) -> list:
    device = torch.device(getattr(args, "device", "cpu"))
    quick = getattr(args, "quick", False)
    rows = []
    for group in groups(device, quick):
        _, t = group.time(device)
        base, fast = group.impls
        info = group.info
        plain_label, fast_label = info["labels"]
        rows += [Row(info["op"], info["shape"], "float32", plain_label, t[base]),
                 Row(info["op"], info["shape"], "float32", fast_label, t[fast],
                     baseline=info["baseline"], baseline_seconds=t[base])]
    return rows
