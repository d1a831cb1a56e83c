"""Scaling Monosemanticity: Extracting Interpretable Features from Claude 3 Sonnet (Templeton et al. 2024).

Definitions (the paper's):
  * the dictionary reads a residual stream (here: after layer 0 of a 2-layer model); inputs are
    scaled by one scalar so that E‖x‖² = d_model;
  * f = ReLU(W_e x + b_e), x̂ = W_d f + b_d, loss E[‖x − x̂‖² + λ Σ_i f_i ‖W_d,i‖₂] with the decoder
    norms unconstrained (λ = 5 in the paper);
  * a feature is dead when it does not fire on any of a large sample of tokens (1e7 in the paper);
  * compute ∝ (number of features) × (training tokens); the loss falls as a power law in compute;
  * feature splitting: a feature of a small dictionary has close neighbours (decoder cosine
    similarity) in larger dictionaries that split its meaning;
  * steering by clamping: the dictionary term is replaced by one where a feature is clamped to a
    multiple of its maximum activation while the reconstruction error term is kept:
    x ← x̂(f with f_i = c · max f_i) + (x − x̂(f)).
"""
from __future__ import annotations

import dataclasses
import html
import math
from typing import ClassVar, Dict, Tuple

import torch

from pyinterp.experiments import _lm
from pyinterp.experiments import dictlearn as DL
from pyinterp.experiments._experiment import Experiment

NAME = "scaling"
TITLE = "Scaling Monosemanticity"
CITATION = ("Templeton et al. 2024, <i>Scaling Monosemanticity: Extracting Interpretable Features from Claude 3 "
            "Sonnet</i>, Transformer Circuits Thread, <a href='https://transformer-circuits.pub/2024/"
            "scaling-monosemanticity/index.html'>transformer-circuits.pub/2024/scaling-monosemanticity</a>")
REQUIRES = ("tokenizers",)  # the BPE of its corpus


@dataclasses.dataclass
class Config(DL.CorpusSAEConfig):
    layer: int = 0
    sizes: Tuple[int, ...] = (2048, 8192, 32768, 131072)
    l1_coefficient: float = 5.0
    sae_lr: float = 5e-4
    multipliers: Tuple[float, ...] = (0.0, 1.0, 2.0, 5.0, 10.0)
    n_prompts: int = 6
    gen_tokens: int = 24
    neighbours: int = 5

    SCALES: ClassVar[Dict[str, dict]] = {  # on top of CorpusSAEConfig's
        "quick": dict(sizes=(128, 256, 512, 1024), sae_steps=600),
        "tiny": dict(sizes=(32, 128, 512), n_prompts=2, gen_tokens=8, neighbours=3),
    }


def hook_name(cfg: Config) -> str:
    return f"blocks.{cfg.layer}.hook_resid_post"


def _saes(cfg: Config):
    from pyinterp.sae import ReLUSAE

    return {f"n{n}": ReLUSAE(cfg.d_model, n, l1_coefficient=cfg.l1_coefficient, decoder_norm="free",
                             apply_b_dec_to_input=False, hook_name=hook_name(cfg), seed=cfg.seed + i)
            for i, n in enumerate(cfg.sizes)}


def power_law_fit(x, y):
    """Least squares in log-log: y ≈ a · x^b. Returns (a, b)."""
    lx = torch.tensor([math.log(v) for v in x], dtype=torch.float64)
    ly = torch.tensor([math.log(v) for v in y], dtype=torch.float64)
    A = torch.stack([torch.ones_like(lx), lx], 1)
    sol = torch.linalg.lstsq(A, ly[:, None]).solution[:, 0]
    return math.exp(float(sol[0])), float(sol[1])


def clamp_hook(sae, feature: int, value: float):
    """Hook replacing x by x̂(f with f_feature = value) + (x − x̂(f)); value in the code's units."""
    def hook(act, hook=None):
        v, i = sae.encode(act)
        x_hat = sae.decode(v, i)
        v0 = torch.where(i == feature, torch.zeros_like(v), v)
        steered = sae.decode(v0, i) + value * sae.W_dec[feature] / sae.input_scale
        return (steered + (act - x_hat)).to(act.dtype)
    return hook


@torch.no_grad()
def clamp_effects(model, sae, hook: str, rows: torch.Tensor, feature: int, max_act: float, multipliers,
                  promoted: torch.Tensor) -> dict:
    """Next-token KL(clean ‖ clamped) and probability of ``promoted`` tokens per multiplier."""
    clean = torch.cat([model(rows[s:s + 64]).float() for s in range(0, rows.shape[0], 64)]).log_softmax(-1)
    out = {"multiplier": [], "kl": [], "p_promoted": [], "p_promoted_clean": float(clean.exp()[..., promoted].sum(-1).mean())}
    for c in multipliers:
        fn = clamp_hook(sae, feature, c * max_act)
        lp = torch.cat([model.run_with_hooks(rows[s:s + 64], fwd_hooks=[(hook, fn)]).float()
                        for s in range(0, rows.shape[0], 64)]).log_softmax(-1)
        out["multiplier"].append(float(c))
        out["kl"].append(float((clean.exp() * (clean - lp)).sum(-1).mean()))
        out["p_promoted"].append(float(lp.exp()[..., promoted].sum(-1).mean()))
    return out


def run(config: Config, out_dir, *, fresh: bool = False) -> dict:
    from pyinterp.experiments.dashboards import vocab_strings
    from pyinterp.experiments.report import new_figure

    cfg = config
    hook = hook_name(cfg)
    ex = Experiment(NAME, TITLE, CITATION, cfg, out_dir, fresh=fresh, summary=(
        f"Dictionaries of {len(cfg.sizes)} sizes are trained at once on the residual stream ({hook}) of a "
        "2-layer transformer, with inputs scaled to E‖x‖² = d_model and the decoder-norm-weighted L1 penalty. "
        "Loss falls as a power law in dictionary size and compute, more features die in larger dictionaries, "
        "features split into close neighbours in larger dictionaries, and clamping a feature steers the output."))
    train_rows, eval_rows, tok, d_vocab = DL.corpus_split(cfg)
    model = DL.train_corpus_lm(ex, cfg, train_rows, n_layers=2, d_vocab=d_vocab)
    saes, history = DL.train_dictionaries(ex, cfg, model, train_rows, hook, lambda: _saes(cfg),
                                          l1_warmup_steps=cfg.sae_steps // 20)
    eval_rows = eval_rows.to(ex.device)
    X = DL.hook_acts(model, eval_rows, hook).reshape(-1, cfg.d_model)
    ev = ex.step("evaluate", lambda: {n: DL.evaluate_sae(model, s, hook, eval_rows, X) for n, s in saes.items()})
    names = list(saes)
    sizes = [saes[n].d_sae for n in names]
    losses = [ev[n]["eval_loss"] for n in names]

    # --- loss against dictionary size and compute, with power-law fits
    a_n, b_n = power_law_fit(sizes, losses)
    tokens = cfg.sae_steps * cfg.sae_batch
    compute = [6.0 * cfg.d_model * n * tokens for n in sizes]  # FLOPs of encoder+decoder, fwd+bwd
    a_c, b_c = power_law_fit(compute, losses)
    fig, axes = new_figure(2, 1, size=(4.4, 3.6))
    ax = axes[0]
    ax.plot(sizes, losses, "o", color="#1f4e99", label="eval loss (MSE + λ·L1)")
    xs = torch.logspace(math.log10(sizes[0]) - 0.1, math.log10(sizes[-1]) + 0.1, 20)
    ax.plot(xs.numpy(), (a_n * xs.double() ** b_n).numpy(), "--", color="#c0392b", label=f"fit ∝ N^{b_n:.3f}")
    ax.set_xscale("log"); ax.set_yscale("log"); ax.set_xlabel("features N"); ax.set_ylabel("loss"); ax.legend(fontsize=7)
    ax = axes[1]
    for n, d in zip(names, sizes):
        pts = [(6.0 * cfg.d_model * d * h["tokens"], h[n]["loss"]) for h in history if h["step"] >= cfg.sae_steps // 10]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", lw=1, alpha=0.7, label=f"N={d} (training)")
    ax.plot(compute, losses, "ko", ms=4, label="final eval loss")
    cs = torch.logspace(math.log10(compute[0]) - 0.1, math.log10(compute[-1]) + 0.1, 20).double()
    ax.plot(cs.numpy(), (a_c * cs ** b_c).numpy(), "--", color="#c0392b", label=f"fit ∝ C^{b_c:.3f}")
    ax.set_xscale("log"); ax.set_yscale("log"); ax.set_xlabel("compute C ≈ 6·d·N·tokens (FLOPs)"); ax.legend(fontsize=6)
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:.3g}")
    for a in axes:  # log axes spanning less than a decade: plain labels on the minor ticks too
        a.yaxis.set_major_formatter(plain); a.yaxis.set_minor_formatter(plain)
    axes[0].xaxis.set_minor_formatter(NullFormatter())
    mono = all(b < a * 1.02 for a, b in zip(losses, losses[1:]))
    ex.figure(fig, "loss_scaling.png", "Loss against dictionary size and compute (log-log, power-law fits)",
              "Loss falls as a power law in the number of features and in compute (straight lines in log-log).",
              check=ex.check("larger dictionaries reach lower loss", mono and b_n < 0,
                             f"eval loss by size {sizes}: {[round(v, 4) for v in losses]}; fitted exponents "
                             f"N^{b_n:.3f}, C^{b_c:.3f}"), headline=True)

    # --- dead latents against size
    dead = [ev[n]["dead_fraction"] for n in names]
    fig, ax = new_figure(size=(5, 3.4))
    ax.plot(sizes, [100 * d for d in dead], "o-")
    ax.set_xscale("log"); ax.set_xlabel("features N"); ax.set_ylabel(f"% dead (no firing on {X.shape[0]:,} eval tokens)")
    ex.figure(fig, "dead_fraction.png", "Dead features against dictionary size",
              "The fraction of dead features grows with dictionary size (paper: ~2%, 35%, 65% at 1M, 4M, 34M).",
              check=ex.check("larger dictionaries have a larger dead fraction", dead[-1] >= dead[0],
                             f"dead fraction by size: {[round(d, 3) for d in dead]}"))

    # --- feature neighbourhoods across sizes (feature splitting)
    flat_tok = eval_rows.reshape(-1).cpu()
    dec = {n: saes[n].W_dec.detach().float().cpu() for n in names}
    unit = {n: d / d.norm(dim=1, keepdim=True).clamp_min(1e-12) for n, d in dec.items()}
    small = names[0]
    codes = {small: DL.dense_codes(saes[small], X).cpu()}  # larger ones: only the features looked at
    alive_s = torch.nonzero(ev[small]["density"].cpu() > 0).flatten()
    gen = torch.Generator().manual_seed(cfg.seed)
    maxcos = {n: (unit[small][alive_s] @ unit[n].T).max(1).values for n in names[1:]}
    rand = torch.randn(alive_s.numel(), cfg.d_model, generator=gen)
    rand = rand / rand.norm(dim=1, keepdim=True)
    rand_cos = (rand @ unit[names[-1]].T).max(1).values
    fig, ax = new_figure(size=(6, 3.4))
    b = torch.linspace(0, 1, 41).numpy()
    for n in names[1:]:
        ax.hist(maxcos[n].numpy(), bins=b, histtype="step", lw=1.5, label=f"to N={saes[n].d_sae}")
    ax.hist(rand_cos.numpy(), bins=b, histtype="stepfilled", alpha=0.25, color="#777",
            label=f"random directions to N={saes[names[-1]].d_sae}")
    ax.set_xlabel(f"max decoder cosine similarity of each N={saes[small].d_sae} feature"); ax.set_ylabel("features")
    ax.legend(fontsize=7)
    med_sim = float(maxcos[names[1]].median())
    ex.figure(fig, "neighbourhoods.png", "Feature neighbourhoods across dictionary sizes",
              "Features of a small dictionary have close neighbours (high decoder cosine similarity) in the larger "
              "ones: the same directions are found again, split into finer features.",
              check=ex.check("small-dictionary features reappear in larger dictionaries",
                             med_sim > float(rand_cos.median()) + 0.2,
                             f"median max cosine to N={saes[names[1]].d_sae}: {med_sim:.2f}; random directions: "
                             f"{float(rand_cos.median()):.2f}"))
    vocab = vocab_strings(tok, d_vocab)
    dens_s = ev[small]["density"].cpu()
    pool = alive_s[dens_s[alive_s] >= 5.0 / X.shape[0]] if bool((dens_s[alive_s] >= 5.0 / X.shape[0]).any()) else alive_s
    conc = DL.concentration(codes[small][:, pool], flat_tok, 10)[0]
    root = int(pool[int(conc.argmax())])

    def top_tokens(n, i, k=4):
        f = codes[n][:, i] if n in codes else DL.dense_codes(saes[n], X, features=[i])[:, 0].cpu()
        v, p = f.topk(min(10, f.numel()))
        toks = torch.bincount(flat_tok[p[v > 0]], minlength=d_vocab).topk(k)
        return ", ".join(repr(vocab[int(t)]) for t, c in zip(toks.indices, toks.values) if int(c) > 0) or "—"

    rows_html = [f"<tr><td>N={saes[small].d_sae}</td><td>{root}</td><td>1.00</td>"
                 f"<td>{html.escape(top_tokens(small, root))}</td></tr>"]
    neigh = {}
    for n in names[1:]:
        sim = unit[n] @ unit[small][root]
        v, i = sim.topk(min(cfg.neighbours, sim.numel()))
        neigh[n] = {"ids": i.tolist(), "cos": v.tolist()}
        for vv, ii in zip(v, i):
            rows_html.append(f"<tr><td>N={saes[n].d_sae}</td><td>{int(ii)}</td><td>{float(vv):.2f}</td>"
                             f"<td>{html.escape(top_tokens(n, int(ii)))}</td></tr>")
    ex.section(f"Feature splitting: neighbours of feature {root} of the N={saes[small].d_sae} dictionary",
               "<p>Nearest decoder directions in each larger dictionary (cosine similarity) and the current tokens "
               "of each feature's top-activating contexts.</p><table><tr><th>dictionary</th><th>feature</th>"
               "<th>cosine</th><th>top tokens</th></tr>" + "".join(rows_html) + "</table>")

    # --- clamping a feature during generation
    big = names[-1]
    sae = saes[big]
    dens_b = ev[big]["density"].cpu()
    alive_b = torch.nonzero(dens_b >= 5.0 / X.shape[0]).flatten()
    if alive_b.numel() == 0:
        alive_b = torch.nonzero(dens_b > 0).flatten()
    alive_b = alive_b[torch.randperm(alive_b.numel(), generator=gen)[:2048]].sort().values  # a sample
    cand = DL.dense_codes(sae, X, features=alive_b).cpu()
    cb, tv, _ = DL.concentration(cand, flat_tok, 10)
    cb = cb + 1e-3 * tv[:, 0] / float(tv[:, 0].max())
    j = int(cb.argmax())
    feat = int(alive_b[j])
    max_act = float(cand[:, j].max())
    direct = (DL.fold_ln_final(model, dec[big][feat:feat + 1]) @ model.W_U.detach().float().cpu())[0]
    promoted = direct.topk(10).indices
    eff = clamp_effects(model, sae, hook, eval_rows, feat, max_act, cfg.multipliers, promoted.to(ex.device))
    fig, axes = new_figure(2, 1, size=(4.2, 3.4))
    axes[0].plot(eff["multiplier"], eff["kl"], "o-")
    axes[0].set_xlabel("clamp value / max activation"); axes[0].set_ylabel("KL(clean ‖ clamped), nats/token")
    axes[1].plot(eff["multiplier"], eff["p_promoted"], "o-", color="#2a9d8f", label="clamped")
    axes[1].axhline(eff["p_promoted_clean"], color="#777", ls="--", label="clean")
    axes[1].set_xlabel("clamp value / max activation"); axes[1].set_ylabel("P(feature's top-10 logit tokens)")
    axes[1].legend(fontsize=7)
    mult = eff["multiplier"]
    j1 = mult.index(1.0) if 1.0 in mult else 0
    shift_ok = eff["kl"][-1] > 10 * max(eff["kl"][j1], 1e-6) and eff["p_promoted"][-1] > eff["p_promoted_clean"]
    ex.figure(fig, "clamping.png", f"Clamping feature {feat} of the N={sae.d_sae} dictionary",
              "Clamping a feature to a multiple of its maximum activation (error term kept) shifts the next-token "
              "distribution, more for larger multiples, towards the tokens the feature promotes.",
              check=ex.check("clamping shifts the output", shift_ok,
                             f"feature {feat} (max activation {max_act:.3g}, top tokens {top_tokens(big, feat)}); KL by "
                             f"multiplier {dict(zip(mult, [round(k, 4) for k in eff['kl']]))}; P(promoted) clean "
                             f"{eff['p_promoted_clean']:.4f} → {eff['p_promoted'][-1]:.4f} at {mult[-1]:g}×"))
    prompts = eval_rows[:cfg.n_prompts, :8]
    clean_gen = model.generate(prompts, max_new_tokens=cfg.gen_tokens, temperature=0.0)
    with model.hooks(fwd_hooks=[(hook, clamp_hook(sae, feat, max(mult) * max_act))]):
        steer_gen = model.generate(prompts, max_new_tokens=cfg.gen_tokens, temperature=0.0)
    gen_rows = []
    for p, a, s in zip(prompts, clean_gen, steer_gen):
        dec_ = lambda t: html.escape("".join(vocab[int(x)] for x in t))  # noqa: E731
        gen_rows.append(f"<tr><td class='ctx'>{dec_(p)}</td><td class='ctx'>{dec_(a[p.numel():])}</td>"
                        f"<td class='ctx'>{dec_(s[p.numel():])}</td></tr>")
    ex.section(f"Generation with feature {feat} clamped at {max(mult):g}× its maximum activation",
               f"<p>Feature {feat}'s top tokens: {html.escape(top_tokens(big, feat))}; it promotes "
               f"{html.escape(', '.join(repr(vocab[int(t)]) for t in promoted[:6]))}. Greedy decoding.</p>"
               "<table><tr><th>prompt</th><th>clean</th><th>clamped</th></tr>" + "".join(gen_rows) + "</table>")

    # --- the paper's numbers
    full = cfg.scale == "full"
    ex.compare("dictionary sizes", "1M, 4M, 34M features", ", ".join(str(s) for s in sizes), comparable=False)
    ex.compare("dead features", "~2%, 35%, 65% (no firing over 1e7 tokens)",
               ", ".join(f"{d:.1%}" for d in dead) + f" (no firing over {X.shape[0]:,} tokens)", comparable=False,
               note="far fewer eval tokens", key=True)
    ex.compare("L0 and variance explained", "L0 < 300, ≥ 65% variance explained",
               ", ".join(f"N={s}: L0 {ev[n]['l0']:.1f}, {1 - ev[n]['fvu']:.0%}" for n, s in zip(names, sizes)),
               comparable=full, note="residual stream of a much smaller model")
    ex.compare("loss against compute", "power law", f"fitted L ∝ C^{b_c:.3f} (over {len(sizes)} sizes, same tokens)",
               comparable=False, note="the paper fits the compute-optimal frontier over many runs", key=True)
    ex.compare("clamping", "±5–10× the maximum activation steers the model's output",
               f"{mult[-1]:g}×: KL {eff['kl'][-1]:.3g} nats/token, P(promoted) ×{eff['p_promoted'][-1] / max(eff['p_promoted_clean'], 1e-12):.2g}")
    ex.setting("model", "Claude 3 Sonnet, middle-layer residual stream",
               f"2-layer GELU transformer, d_model {cfg.d_model}, {hook}, trained {cfg.lm_steps} steps on the default corpus",
               "a model this machine can train")
    ex.setting("dictionary training", "up to 34M features, billions of tokens",
               f"{cfg.sae_steps} steps × {cfg.sae_batch} rows from {cfg.act_rows:,} stored activations, λ={cfg.l1_coefficient:g}, "
               f"lr {cfg.sae_lr:g}", "time budget")
    ex.setting("scaling-law fit", "compute-optimal frontier over many (features, steps) runs",
               "one run per size with the same tokens: a fit through the final losses", "time budget")
    metrics = {
        "tokenizer": _lm.tokenizer_info(tok),
        "sizes": sizes, "eval_loss": losses, "power_law_size": {"a": a_n, "b": b_n},
        "power_law_compute": {"a": a_c, "b": b_c}, "dead_fraction": dead,
        "l0": [ev[n]["l0"] for n in names], "fvu": [ev[n]["fvu"] for n in names],
        "loss_recovered": [ev[n]["loss_recovered"] for n in names],
        "neighbourhood": {"root_feature": root, "neighbours": neigh,
                          "median_max_cos": {n: float(maxcos[n].median()) for n in names[1:]},
                          "random_median_max_cos": float(rand_cos.median())},
        "clamping": {"feature": feat, "max_act": max_act, **eff},
        "lm_final_loss": model.loss_history[-1][1] if model.loss_history else None,
    }
    return ex.finish(metrics)
