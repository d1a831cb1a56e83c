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

from pyinterp.bench.timing import Row, interleaved_medians

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


def _saelens_training_rows(sl, N, d_in, d_sae, repeat, device) -> list:
    from pyinterp.sae import accelerate

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, d_in, generator=gen).to(device)
    rows = []
    cases = [("topk", None), ("topk", 0.1), ("batchtopk", None), ("jumprelu", None), ("standard", None)]
    for kind, dead_share in cases:
        plain, fast = _training_saes(sl, kind, d_in, d_sae, x)
        plain.to(device), fast.to(device)
        accelerate(fast)
        dead = None
        if dead_share:
            dead = torch.rand(d_sae, generator=gen).to(device) < dead_share
        t = interleaved_medians({"plain": _train_step(plain, x, dead), "fast": _train_step(fast, x, dead)},
                                repeat, device=device)
        code = f"k={K}" if kind in ("topk", "batchtopk") else f"L0~{L0}"
        shape = f"N={N} d_in={d_in} d_sae={d_sae} {code}" + (f" dead={dead_share:.0%}" if dead_share else "")
        op = f"saelens_{kind}_train_step"
        rows += [Row(op, shape, "float32", f"sae_lens {sl.__version__}", t["plain"]),
                 Row(op, shape, "float32", "accelerate(sae_lens)", t["fast"], baseline="sae_lens",
                     baseline_seconds=t["plain"])]
    return rows


def _saelens_inference_rows(sl, N, d_in, d_sae, repeat, device) -> list:
    from pyinterp.sae import accelerate

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(N, d_in, generator=gen).to(device)
    rows = []
    for kind in ("standard", "jumprelu"):
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
        for method in ("encode", "forward"):
            fns = {name: (lambda m=m, method=method: getattr(m, method)(x))
                   for name, m in (("plain", plain), ("fast", fast))}
            with torch.no_grad():
                t = interleaved_medians(fns, repeat, device=device)
            op = f"saelens_{kind}_{method}"
            shape = f"N={N} d_in={d_in} d_sae={d_sae} L0~{L0}"
            rows += [Row(op, shape, "float32", f"sae_lens {sl.__version__}", t["plain"]),
                     Row(op, shape, "float32", "accelerate(sae_lens)", t["fast"], baseline="sae_lens",
                         baseline_seconds=t["plain"])]
    return rows


def _collection_rows(quick, repeat, device) -> list:
    from pyinterp.models import Transformer, TransformerConfig
    from pyinterp.sae.store import activation_fn

    d = 256 if quick else 512
    model = Transformer(TransformerConfig(n_layers=4, d_model=d, n_heads=8, d_vocab=4096, n_ctx=256,
                                          act_fn="gelu")).to(device).eval()
    tokens = torch.randint(0, 4096, (8 if quick else 16, 256), generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(device)
    name = "blocks.0.hook_resid_post"
    early = activation_fn(model, [name])

    def full():
        with torch.no_grad():
            model.run_with_cache(tokens, names_filter=[name])
    t = interleaved_medians({"full": full, "early": lambda: early(tokens)}, repeat, device=device)
    shape = f"4 layers d_model={d} B={tokens.shape[0]} T=256, hook {name}"
    return [Row("collect_activations", shape, "float32", "run_with_cache (whole forward)", t["full"]),
            Row("collect_activations", shape, "float32", "pyinterp.sae.stream (stops after block 0)",
                t["early"], baseline="whole forward", baseline_seconds=t["full"])]


def _tl_solu_rows(quick, repeat, device) -> list:
    """A TransformerLens SoLU-LN model: forward and training step, plain vs apply()."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import transformer_lens as tl
    except ImportError:
        return []
    from pyinterp.integrations import transformer_lens as ptl

    d, L, B, T = (256, 2, 4, 128) if quick else (512, 4, 8, 256)
    cfg = tl.HookedTransformerConfig(n_layers=L, d_model=d, n_heads=8, d_head=d // 8, d_mlp=4 * d,
                                     d_vocab=4096, n_ctx=T, act_fn="solu_ln", normalization_type="LN",
                                     seed=0, device=str(device))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain, fast = tl.HookedTransformer(cfg), tl.HookedTransformer(cfg)
    fast.load_state_dict(plain.state_dict())
    ptl.apply(fast)
    tokens = torch.randint(0, 4096, (B, T), generator=torch.Generator().manual_seed(0)).to(device)

    def fwd(m):
        def f():
            with torch.no_grad():
                m(tokens)
        return f

    def step(m):
        opt = torch.optim.Adam(m.parameters(), lr=1e-6)

        def f():
            opt.zero_grad(set_to_none=True)
            m(tokens, return_type="loss").backward()
            opt.step()
        return f
    shape = f"L={L} d_model={d} d_mlp={4 * d} B={B} T={T}"
    rows = []
    for op, make in (("tl_solu_ln_forward", fwd), ("tl_solu_ln_train_step", step)):
        t = interleaved_medians({"plain": make(plain), "fast": make(fast)}, repeat, device=device)
        rows += [Row(op, shape, "float32", f"transformer_lens {getattr(tl, '__version__', '')}".strip(),
                     t["plain"]),
                 Row(op, shape, "float32", "integrations.transformer_lens.apply", t["fast"],
                     baseline="transformer_lens", baseline_seconds=t["plain"])]
    return rows


def run(args) -> list:
    device = torch.device(getattr(args, "device", "cpu"))
    quick = getattr(args, "quick", False)
    N, d_in, d_sae = QUICK if quick else FULL
    repeat = 3 if quick else 5
    rows = _collection_rows(quick, repeat, device) + _tl_solu_rows(quick, repeat, device)
    sl = _sae_lens()
    if sl is not None:
        rows += _saelens_training_rows(sl, N, d_in, d_sae, repeat, device)
        rows += _saelens_inference_rows(sl, N, d_in, d_sae, repeat, device)
    return rows
