"""Softmax Linear Units (Elhage et al. 2022): SoLU(+LN) vs GELU transformers.

Definitions (the paper's): SoLU(x) = x · softmax(x) over the MLP hidden dimension, deployed as
LN(SoLU(x)); neurons are read *before* the LN (``hook_mid``, TransformerLens's convention).
The paper reports that with the LN the loss matches a GELU model of the same size (within
±0.01 nats for 0.95–1.05× size), and that the fraction of neurons humans judge interpretable
(≥80% of ~20 top snippets fit one rule) rises from ~35% to ~60%.

Here: the same small transformer trained twice on the default corpus (identical data order and
initial weights except the MLP activation); we compare held-out loss, activation sparsity
(participation ratio: fraction of neurons effectively active per token) and an automated
monosemanticity proxy (``neuron_proxy``: concentration of each neuron's top-20 tokens, share
of neurons ≥ 0.8), for GELU neurons and SoLU neurons before and after the LN, and show the
top-activating contexts of a few neurons of each.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Dict

import torch

from pyinterp.experiments import _lm, neuron_proxy
from pyinterp.experiments._experiment import BaseConfig, Experiment

NAME = "solu"
TITLE = "Softmax Linear Units"
CITATION = ("Elhage et al. 2022, <i>Softmax Linear Units</i>, Transformer Circuits Thread, "
            "<a href='https://transformer-circuits.pub/2022/solu/index.html'>transformer-circuits.pub/2022/solu</a>")
REQUIRES = ("tokenizers",)  # the BPE of its corpus


@dataclasses.dataclass
class Config(BaseConfig):
    n_layers: int = 2
    d_model: int = 256
    n_heads: int = 4
    d_mlp: int = 1024
    n_ctx: int = 256
    vocab_size: int = 4096
    steps: int = 20_000
    batch: int = 32
    lr: float = 1e-3
    train_rows: int = 200_000
    eval_rows: int = 512
    top_k: int = 20
    show_neurons: int = 4

    SCALES: ClassVar[Dict[str, dict]] = {
        "quick": dict(n_layers=1, d_model=64, n_heads=4, d_mlp=256, n_ctx=64, vocab_size=1024, steps=1200,
                      batch=32, lr=3e-3, train_rows=20_000, eval_rows=256),
        "tiny": dict(n_layers=1, d_model=32, n_heads=2, d_mlp=64, n_ctx=32, vocab_size=1024, steps=150,
                     batch=16, lr=5e-3, train_rows=2000, eval_rows=64, top_k=10, show_neurons=2),
    }


def model_config(cfg: Config, act_fn: str):
    from pyinterp.models import TransformerConfig

    return TransformerConfig(n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, d_mlp=cfg.d_mlp,
                             d_vocab=cfg.vocab_size, n_ctx=cfg.n_ctx, act_fn=act_fn, seed=cfg.seed)


def _train(cfg: Config, ex: Experiment, act_fn: str, rows: torch.Tensor) -> dict:
    from pyinterp._progress import enabled as progress_enabled
    from pyinterp.models import TrainConfig, Transformer, train

    model = Transformer(model_config(cfg, act_fn)).to(ex.device)
    tc = TrainConfig(max_steps=cfg.steps, batch_size=cfg.batch, lr=cfg.lr, warmup_steps=max(1, cfg.steps // 20),
                     seed=cfg.seed, checkpoint_every=max(50, cfg.steps // 5), log_every=max(1, cfg.steps // 100),
                     progress=progress_enabled())
    # Mid-training checkpoints live beside the step results, so an interrupted training resumes.
    res = train(model, rows, tc, out_dir=ex.steps.dir / f"train_{act_fn}", fresh=ex.steps.fresh)
    return {"state": {k: v.detach().cpu() for k, v in res.model.state_dict().items()},
            "loss_curve": res.history["loss"]}


def _load(cfg: Config, act_fn: str, state: dict, device: str):
    from pyinterp.models import Transformer

    m = Transformer(model_config(cfg, act_fn))
    m.load_state_dict(state)
    return m.to(device).eval()


@torch.no_grad()
def _acts(model, rows: torch.Tensor, names, device, batch: int = 32) -> Dict[str, torch.Tensor]:
    out = {n: [] for n in names}
    for s in range(0, rows.shape[0], batch):
        _, cache = model.run_with_cache(rows[s:s + batch].to(device), names_filter=list(names), device="cpu")
        for n in names:
            out[n].append(cache[n].reshape(-1, cache[n].shape[-1]).float())
    return {n: torch.cat(v) for n, v in out.items()}


def run(config: Config, out_dir, *, fresh: bool = False) -> dict:
    from pyinterp.experiments.report import new_figure

    cfg = config
    ex = Experiment(NAME, TITLE, CITATION, cfg, out_dir, fresh=fresh, summary=(
        "The same small transformer trained with a GELU MLP and with a SoLU MLP followed by LayerNorm. "
        "SoLU should cost (almost) no loss while making neurons sparser and easier to interpret."))
    data = ex.step("data", lambda: {"rows": _lm.corpus_rows(cfg.vocab_size, cfg.n_ctx, cfg.train_rows + cfg.eval_rows,
                                                            cfg.seed)})
    rows = data["rows"]
    train_rows, eval_rows = rows[cfg.eval_rows:], rows[:cfg.eval_rows]
    runs = {a: ex.step(f"train_{a}", lambda a=a: _train(cfg, ex, a, train_rows)) for a in ("gelu", "solu_ln")}
    models = {a: _load(cfg, a, runs[a]["state"], ex.device) for a in runs}
    loss = {a: _lm.mean_loss(models[a], eval_rows) for a in models}
    last = cfg.n_layers - 1
    gelu_acts = _acts(models["gelu"], eval_rows, [f"blocks.{last}.mlp.hook_post"], ex.device)
    solu_acts = _acts(models["solu_ln"], eval_rows, [f"blocks.{last}.mlp.hook_mid", f"blocks.{last}.mlp.hook_post"],
                      ex.device)
    acts = {"GELU": gelu_acts[f"blocks.{last}.mlp.hook_post"],
            "SoLU (before LN)": solu_acts[f"blocks.{last}.mlp.hook_mid"],
            "SoLU (after LN)": solu_acts[f"blocks.{last}.mlp.hook_post"]}
    flat_tokens = eval_rows.reshape(-1)
    reports = {k: neuron_proxy.unit_report(v, flat_tokens, k=cfg.top_k) for k, v in acts.items()}
    pr = {k: float(neuron_proxy.participation_ratio(v).mean()) for k, v in acts.items()}

    # loss curves + held-out loss
    fig, (a1, a2) = new_figure(2, 1, size=(4.8, 3.6))
    for a, lab in (("gelu", "GELU"), ("solu_ln", "SoLU+LN")):
        c = torch.tensor(runs[a]["loss_curve"])
        a1.plot(c[:, 0].numpy(), c[:, 1].numpy(), label=lab, lw=1)
    a1.set_xlabel("step"); a1.set_ylabel("training loss (nats)"); a1.legend(); a1.set_yscale("log")
    a2.bar(["GELU", "SoLU+LN"], [loss["gelu"], loss["solu_ln"]], color=["#1f4e99", "#d9822b"])
    a2.set_ylabel("held-out loss (nats)")
    ratio = loss["solu_ln"] / loss["gelu"]
    ok_loss = ratio <= 1.05
    ex.figure(fig, "loss.png", "Training and held-out loss, GELU vs SoLU+LN",
              "SoLU+LN reaches the same loss as GELU (paper: within ±0.01 nats of a 0.95–1.05× GELU model).",
              check=ex.check("SoLU+LN loss within 5% of GELU", ok_loss,
                             f"held-out loss GELU {loss['gelu']:.4f}, SoLU+LN {loss['solu_ln']:.4f} (ratio {ratio:.3f})"),
              headline=True)

    # sparsity
    fig, ax = new_figure(size=(6, 3.6))
    for k, v in acts.items():
        p = neuron_proxy.participation_ratio(v)
        ax.hist(p.numpy(), bins=40, alpha=0.55, label=f"{k}: mean {p.mean():.3f}", density=True)
    ax.set_xlabel("fraction of neurons effectively active per token (participation ratio)"); ax.legend(fontsize=7)
    sparser = pr["SoLU (before LN)"] < pr["GELU"]
    ex.figure(fig, "sparsity.png", "Activation sparsity per token",
              "SoLU's softmax concentrates each token's activation on few neurons, so SoLU neurons (before the LN) "
              "are much sparser than GELU neurons; the LN spreads some of it back out.",
              check=ex.check("SoLU neurons sparser than GELU", sparser,
                             ", ".join(f"{k} {v:.3f}" for k, v in pr.items())))

    # monosemanticity proxy
    fig, ax = new_figure(size=(6, 3.6))
    for k, r in reports.items():
        ax.hist(r["concentration"][r["alive"]].numpy(), bins=20, range=(0, 1), alpha=0.5, density=True,
                label=f"{k}: {r['monosemantic_fraction']:.0%} ≥ 0.8")
    ax.axvline(0.8, color="k", ls=":")
    ax.set_xlabel(f"token concentration of each neuron's top {cfg.top_k} activations"); ax.legend(fontsize=7)
    mono = {k: r["monosemantic_fraction"] for k, r in reports.items()}
    more = mono["SoLU (before LN)"] > mono["GELU"]
    ex.figure(fig, "monosemanticity.png", "Automated monosemanticity proxy",
              "The paper finds more interpretable neurons with SoLU (~60%) than GELU (~35%); with our proxy "
              "(share of a neuron's top activations on one token) SoLU neurons should score higher.",
              check=ex.check("SoLU neurons more monosemantic than GELU (proxy)", more,
                             ", ".join(f"{k} {v:.0%}" for k, v in mono.items())))

    # top-activating contexts
    dec = _lm.decoder(cfg.vocab_size)  # the tokenizer the rows were made with (never a fallback)
    g = torch.Generator().manual_seed(cfg.seed)
    parts = ["<p class='small'>Randomly chosen neurons (same indices are unrelated between models); each line is "
             "one of the neuron's top-activating positions (outlined) with its context, shaded by activation.</p>"]
    for k in ("GELU", "SoLU (before LN)"):
        r = reports[k]
        alive = torch.nonzero(r["alive"]).flatten()
        pick = alive[torch.randperm(len(alive), generator=g)[:cfg.show_neurons]].tolist() if len(alive) else []
        parts.append(f"<h3>{k}</h3>")
        for u in pick:
            snippets = neuron_proxy.contexts_html(dec, eval_rows, acts[k], u, r["top_positions"][:5, u].tolist())
            parts.append(f"<p><b>neuron {u}</b> — concentration {float(r['concentration'][u]):.2f}</p>" + "".join(snippets))
    ex.section("Top-activating contexts", "\n".join(parts))

    ex.compare("loss SoLU+LN / GELU", "≈ 1 (±0.01 nats)", f"{ratio:.3f} ({loss['solu_ln'] - loss['gelu']:+.3f} nats)",
               comparable=cfg.scale == "full", note="" if cfg.scale == "full" else "tiny models, short training",
               key=True)
    ex.compare("interpretable neurons", "~35% GELU → ~60% SoLU (human judges)",
               f"proxy: GELU {mono['GELU']:.0%} → SoLU {mono['SoLU (before LN)']:.0%}", comparable=False,
               note="automated one-token proxy, not human judgement", key=True)
    tok = _lm.tokenizer(cfg.vocab_size)
    ex.setting("model", "1–64 layers, paper-size models trained on a large web corpus",
               f"{cfg.n_layers} layer(s), d_model {cfg.d_model}, d_mlp {cfg.d_mlp}, n_ctx {cfg.n_ctx}, "
               f"tokenizer: {_lm.tokenizer_text(tok)}", "default corpus (Python stdlib docs), fits this scale")
    ex.setting("training", "billions of tokens", f"{cfg.steps} steps × {cfg.batch} × {cfg.n_ctx} tokens", "time budget")
    ex.setting("interpretability", "human raters, ~20 snippets", f"token-concentration proxy over top {cfg.top_k}", "automated")
    metrics = {"tokenizer": _lm.tokenizer_info(tok),
               "eval_loss": loss, "loss_ratio": ratio, "participation_ratio": pr, "monosemantic_fraction": mono,
               "mean_concentration": {k: r["mean_concentration"] for k, r in reports.items()}}
    return ex.finish(metrics)
