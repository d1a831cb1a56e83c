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
from functools import lru_cache

import torch

from pyinterp.bench.suite import Group
from pyinterp.bench.timing import Row

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


@lru_cache(maxsize=1)
def _models(act: str, batch: int, seq: int):
    """pyinterp's Transformer and the same model (same weights) from plain torch modules."""
    from pyinterp.bench._plain_transformer import PlainTransformer
    from pyinterp.models import Transformer

    tokens = torch.randint(0, 4096, (batch, seq), generator=torch.Generator().manual_seed(0))
    ours = Transformer(default_config(act))
    plain = PlainTransformer.like(ours)
    with torch.no_grad():  # same function: checked, so the comparison is like for like
        torch.testing.assert_close(ours(tokens[:1, :16]), plain(tokens[:1, :16]), atol=2e-4, rtol=2e-4)
    return ours, plain, tokens


def _calls(kind, act, size):
    ours, plain, tokens = _models(act, size["batch"], size["seq"])
    make = _train_step if kind == "train" else _forward
    return {"plain_torch": make(plain, tokens), "pyinterp": make(ours, tokens)}


def _hookpoint_calls():
    from pyinterp.models.hooks import HookPoint

    hp, x = HookPoint(), torch.zeros(1)

    def calls_1000():
        for _ in range(1000):
            hp(x)
    return {"pyinterp": calls_1000}


def groups(device=None, quick=False) -> list[Group]:
    size = QUICK if quick else FULL
    repeat = 5 if quick else 9
    out = []
    for act, cls in (("solu_ln", "SoLULN"), ("gelu", "GELU")):
        info = dict(size, act=act)
        out.append(Group(f"TrainStep{cls}", ("plain_torch", "pyinterp"),
                         lambda act=act: _calls("train", act, size), grad=True, repeat=repeat,
                         warmup=2, info=info))
        out.append(Group(f"Forward{cls}", ("plain_torch", "pyinterp"),
                         lambda act=act: _calls("forward", act, size), repeat=repeat, warmup=2,
                         info=info))
    out.append(Group("HookPointCall", ("pyinterp",), _hookpoint_calls, repeat=repeat))
    return out


def hookpoint_call_seconds(n: int = 200_000) -> float:
    """Seconds per call of an unhooked HookPoint."""
    from pyinterp.models.hooks import HookPoint

    hp, x = HookPoint(), torch.zeros(1)
    t0 = time.perf_counter()
    for _ in range(n):
        hp(x)
    return (time.perf_counter() - t0) / n


def run(args) -> list[Row]:
    from pyinterp.bench.backends import auto_backend

    quick = getattr(args, "quick", False)
    rows, fwd_ours = [], {}
    for group in groups(None, quick):
        if group.name == "HookPointCall":
            continue
        info = group.info
        act, B, T = info["act"], info["batch"], info["seq"]
        shape = f"B={B} T={T} L=2 d=256 H=4 d_mlp=1024 V=4096"
        label = f"pyinterp Transformer [{act}" + (f", {auto_backend('solu_ln', 'cpu')}]"
                                                  if act == "solu_ln" else "]")
        _, t = group.time()
        tok = B * T
        op = "train_step" if group.grad else "forward"
        ours_label = label if group.grad else label + " no hooks"
        rows += [
            Row(op, shape, "float32", f"plain torch modules [{act}]", t["plain_torch"],
                extra={"tokens_per_s": tok / t["plain_torch"]}),
            Row(op, shape, "float32", ours_label, t["pyinterp"], baseline="plain torch",
                baseline_seconds=t["plain_torch"], extra={"tokens_per_s": tok / t["pyinterp"]}),
        ]
        if not group.grad:
            fwd_ours[act] = t["pyinterp"]
    # hook points with nothing registered, against the GELU model's forward
    ours = _models("gelu", *(QUICK if quick else FULL).values())[0]
    n_calls = len(ours.hook_names())
    per = hookpoint_call_seconds()
    rows.append(Row("hook_points_unhooked", f"{n_calls} calls/forward", "-",
                    f"{per * 1e9:.0f} ns/call = {100 * n_calls * per / fwd_ours['gelu']:.3f}% of forward",
                    n_calls * per, baseline="pyinterp forward", baseline_seconds=fwd_ours["gelu"],
                    extra={"ns_per_call": per * 1e9, "calls": n_calls}))
    return rows
