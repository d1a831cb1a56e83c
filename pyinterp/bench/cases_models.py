"""Training throughput of the default small model and the cost of hook points.

1. Training step (forward + backward + AdamW) of the default small model (2 layers,
   d_model 256, 4 heads, d_mlp 1024, SoLU+LN MLP, d_vocab 4096): pyinterp's Transformer with
   pyinterp ops (the fused ``solu_ln`` kernel of the backend ``auto`` picks) vs the same model
   built from plain torch modules (:class:`pyinterp.bench._plain_transformer.PlainTransformer`,
   same weights). Rows report tokens/s in ``extra``.
2. Hook overhead with nothing registered: the same comparison with GELU MLPs (no pyinterp
   kernel on either side, so the difference is the hook points and module structure), forward
   and training step; target < 5%. Also the measured cost of one unhooked hook-point call
   times the number of calls per forward.

    pyinterp bench models [--quick] [--threads N]
"""
from __future__ import annotations

import time

import torch

from pyinterp.bench.timing import Row, interleaved_medians

FULL = dict(batch=8, seq=256)
QUICK = dict(batch=4, seq=128)


def default_config(act_fn: str = "solu_ln"):
    from pyinterp.models import TransformerConfig

    return TransformerConfig(n_layers=2, d_model=256, n_heads=4, d_mlp=1024, d_vocab=4096,
                             n_ctx=256, act_fn=act_fn, positional="learned", seed=0)


def _train_step(model, tokens):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        model.loss(tokens).backward()
        opt.step()
    return step


def _forward(model, tokens):
    def fwd():
        with torch.no_grad():
            model(tokens)
    return fwd


def hookpoint_call_seconds(n: int = 200_000) -> float:
    """Seconds per call of an unhooked HookPoint."""
    from pyinterp.models.hooks import HookPoint

    hp, x = HookPoint(), torch.zeros(1)
    t0 = time.perf_counter()
    for _ in range(n):
        hp(x)
    return (time.perf_counter() - t0) / n


def run(args) -> list[Row]:
    from pyinterp.bench._plain_transformer import PlainTransformer
    from pyinterp.bench.backends import auto_backend
    from pyinterp.models import Transformer

    quick = getattr(args, "quick", False)
    size = QUICK if quick else FULL
    repeat = 5 if quick else 9
    B, T = size["batch"], size["seq"]
    tokens = torch.randint(0, 4096, (B, T), generator=torch.Generator().manual_seed(0))
    shape = f"B={B} T={T} L=2 d=256 H=4 d_mlp=1024 V=4096"
    rows = []
    for act in ("solu_ln", "gelu"):
        ours = Transformer(default_config(act))
        plain = PlainTransformer.like(ours)
        with torch.no_grad():  # same function: checked, so the comparison is like for like
            torch.testing.assert_close(ours(tokens[:1, :16]), plain(tokens[:1, :16]),
                                       atol=2e-4, rtol=2e-4)
        backend = "-"
        if act == "solu_ln":
            backend = auto_backend("solu_ln", "cpu")
        t = interleaved_medians({"plain_train": _train_step(plain, tokens), "ours_train": _train_step(ours, tokens),
                                 "plain_fwd": _forward(plain, tokens), "ours_fwd": _forward(ours, tokens)},
                                repeat, warmup=2)
        tok = B * T
        label = f"pyinterp Transformer [{act}{', ' + backend if act == 'solu_ln' else ''}]"
        rows += [
            Row("train_step", shape, "float32", f"plain torch modules [{act}]", t["plain_train"],
                extra={"tokens_per_s": tok / t["plain_train"]}),
            Row("train_step", shape, "float32", label, t["ours_train"], baseline="plain torch",
                baseline_seconds=t["plain_train"], extra={"tokens_per_s": tok / t["ours_train"]}),
            Row("forward", shape, "float32", f"plain torch modules [{act}]", t["plain_fwd"],
                extra={"tokens_per_s": tok / t["plain_fwd"]}),
            Row("forward", shape, "float32", label + " no hooks", t["ours_fwd"], baseline="plain torch",
                baseline_seconds=t["plain_fwd"], extra={"tokens_per_s": tok / t["ours_fwd"]}),
        ]
        if act == "gelu":
            n_calls = len(ours.hook_names())
            per = hookpoint_call_seconds()
            rows.append(Row("hook_points_unhooked", f"{n_calls} calls/forward", "-",
                            f"{per * 1e9:.0f} ns/call = {100 * n_calls * per / t['ours_fwd']:.3f}% of forward",
                            n_calls * per, baseline="pyinterp forward", baseline_seconds=t["ours_fwd"],
                            extra={"ns_per_call": per * 1e9, "calls": n_calls}))
    return rows
