"""In-context Learning and Induction Heads (Olsson et al. 2022).

Definitions (the paper's, with TransformerLens's detector):
  * in-context-learning (ICL) score: loss at a late token minus loss at an early token, averaged
    over examples. The paper uses tokens 500 and 50; our contexts are short, so we scale them to
    the context length T as round(T·500/512) and round(T·50/512) (``pyinterp.attention.icl_scores``);
  * induction (prefix-matching) score of a head: on repeated random tokens (the copy starts at a
    random offset, so positional attention cannot fake it), its attention mass on the token after
    the earlier copy of the current token (``pyinterp.attention.induction_scores``);
  * previous-token score: TransformerLens's detector score for the previous-token pattern
    (``pyinterp.attention.head_scores``);
  * loss on repeated random sequences: mean next-token loss over the second copy.
The paper finds that induction heads form in a phase change (the only bump in the training
loss), at the same time as the ICL score improves; one-layer attention-only models never form
them; ablating them removes most in-context learning.

Here: attention-only 1-layer and 2-layer models trained on the default corpus, evaluated every
few steps (each training is a checkpointed step with mid-training checkpoints), and the 2-layer
model's induction heads ablated by zeroing their ``hook_z``. At the ``tiny``/``quick`` scales half
of every batch is tiled random-token rows of random period (``mixed_batches``) and the weights
start at TransformerLens's scale, so the phase change happens within a few hundred steps
(docs/decisions/induction-repeated-spans.md).
"""
from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Dict, Optional

import torch

from pyinterp.experiments import _lm
from pyinterp.experiments._experiment import BaseConfig, Experiment

NAME = "induction"
TITLE = "In-context Learning and Induction Heads"
CITATION = ("Olsson et al. 2022, <i>In-context Learning and Induction Heads</i>, Transformer Circuits Thread, "
            "<a href='https://transformer-circuits.pub/2022/in-context-learning-and-induction-heads/index.html'>"
            "transformer-circuits.pub/2022/in-context-learning-and-induction-heads</a>")
REQUIRES = ("tokenizers",)  # the BPE of its corpus


@dataclasses.dataclass
class Config(BaseConfig):
    d_model: int = 256
    n_heads: int = 8
    n_ctx: int = 256
    vocab_size: int = 4096
    tokenizer: str = "bpe"  # "bytes": byte-level, vocab 257
    steps: int = 20_000
    batch: int = 32
    lr: float = 1e-3
    train_rows: int = 200_000
    eval_rows: int = 128
    n_evals: int = 40
    # Share of every training batch made of separate pure repeated-random-token sequences
    # (fresh each step, random offset); the rest are default-corpus rows. 0 = plain corpus, as
    # in the paper.
    rep_share: float = 0.0
    # Tokens of those repeated sequences (and of the induction-score / repeated-loss probes) are
    # drawn from [0, rep_vocab); 0 = the whole vocabulary.
    rep_vocab: int = 0
    # Std of the initial weights; None = TransformerLens's default 0.8/sqrt(d_model). (The library
    # default 0.02 is GPT-2's for d_model 768; at d_model 64 it leaves the QK circuits so small that
    # training sits on the plateau before the phase change far beyond the tiny/quick budgets.)
    init_std: Optional[float] = None

    SCALES: ClassVar[Dict[str, dict]] = {
        "quick": dict(d_model=64, n_heads=4, n_ctx=64, vocab_size=257, tokenizer="bytes", steps=1500, batch=32,
                      lr=2e-3, train_rows=20_000, eval_rows=512, n_evals=15, rep_share=0.5, rep_vocab=64),
        "tiny": dict(d_model=64, n_heads=4, n_ctx=32, vocab_size=257, tokenizer="bytes", steps=1000, batch=32,
                     lr=2e-3, train_rows=4000, eval_rows=512, n_evals=8, rep_share=0.5, rep_vocab=64),
    }


def mixed_batches(cfg: Config, corpus: torch.Tensor):
    """data(step) -> (batch, n_ctx) batch for ``train``: a (1 - rep_share) share of corpus rows and a
    rep_share share of fresh repeated random sequences (``periodic_tokens``: a random segment tiled
    over the row with a random period and phase, so only prefix matching + copying, not position,
    predicts the repeats). Seeded by the step, so resuming from a checkpoint replays the same
    batches. corpus: (N, n_ctx)."""
    from pyinterp.data import periodic_tokens

    n_rep = min(cfg.batch, round(cfg.batch * cfg.rep_share))
    n_txt = cfg.batch - n_rep
    seq = (cfg.n_ctx - 8) // 2

    def data(step: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(cfg.seed * 100003 + step)
        parts = [corpus[torch.randint(0, corpus.shape[0], (n_txt,), generator=g)]] if n_txt else []
        if n_rep:
            # period uniform in [seq/2, seq] per row: a head attending at a fixed relative position
            # cannot fake the copy (the evaluation probes use period seq).
            parts.append(periodic_tokens(n_rep, cfg.n_ctx, max(2, seq // 2), seq, cfg.rep_vocab or cfg.vocab_size,
                                         generator=g))
        return torch.cat(parts)

    return data


def model_config(cfg: Config, n_layers: int):
    from pyinterp.models import TransformerConfig

    return TransformerConfig(n_layers=n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, d_vocab=cfg.vocab_size,
                             n_ctx=cfg.n_ctx, act_fn=None, seed=cfg.seed,
                             init_std=cfg.init_std if cfg.init_std is not None else 0.8 / math.sqrt(cfg.d_model))


def repeated(cfg: Config):
    from pyinterp.data import repeated_tokens

    seq = (cfg.n_ctx - 8) // 2
    return repeated_tokens(32, seq, cfg.rep_vocab or cfg.vocab_size, seed=cfg.seed + 7, n_ctx=2 * seq + 8)


@torch.no_grad()
def evaluate(model, cfg: Config, eval_rows: torch.Tensor, rep, fwd_hooks=()) -> dict:
    """ICL score, induction and previous-token scores per head, loss on repeated tokens."""
    from pyinterp import attention

    dev = next(model.parameters()).device
    with model.hooks(list(fwd_hooks)):
        icl = attention.icl_scores(model, eval_rows.to(dev))
        loss = attention.per_token_loss(model, rep.tokens.to(dev)).cpu()
    mask = rep.induction_mask()[:, 1:].float()
    rep_loss = float((loss * mask).sum() / mask.sum())
    out = {"icl": icl["score"], "rep_loss": rep_loss, "loss": float(icl["loss_curve"].mean())}
    if not fwd_hooks:
        seq = rep.period
        out["induction"] = attention.induction_scores(model, seq_len=seq, batch=16, seed=cfg.seed + 3,
                                                      n_ctx=2 * seq + 8, d_vocab=cfg.rep_vocab or None).scores.tolist()
        out["prev"] = attention.head_scores(model, eval_rows[:16].to(dev), kinds=("previous_token",))[
            "previous_token"].tolist()
    return out


def _train(cfg: Config, ex: Experiment, n_layers: int, train_rows, eval_rows) -> dict:
    from pyinterp._progress import enabled as progress_enabled
    from pyinterp.models import TrainConfig, Transformer, train

    model = Transformer(model_config(cfg, n_layers)).to(ex.device)
    rep = repeated(cfg)
    every = max(1, cfg.steps // cfg.n_evals)
    tc = TrainConfig(max_steps=cfg.steps, batch_size=cfg.batch, lr=cfg.lr, warmup_steps=max(1, cfg.steps // 20),
                     seed=cfg.seed, eval_every=every, checkpoint_every=every, log_every=max(1, cfg.steps // 100),
                     progress=progress_enabled())
    first = {"step": 0, **evaluate(model.eval(), cfg, eval_rows, rep)}
    model.train()
    res = train(model, train_rows, tc, out_dir=ex.steps.dir / f"train_{n_layers}l",
                eval_fn=lambda m, step: evaluate(m, cfg, eval_rows, rep), fresh=ex.steps.fresh)
    return {"state": {k: v.detach().cpu() for k, v in res.model.state_dict().items()},
            "evals": [first] + res.history["eval"], "loss_curve": res.history["loss"]}


def zero_heads_hooks(heads):
    """fwd_hooks zeroing hook_z of the given (layer, head) pairs (hook_z: (B, T, H, d_head))."""
    by_layer = {}
    for l, h in heads:
        by_layer.setdefault(l, []).append(h)

    def make(hs):
        def fn(z, hook):
            z = z.clone()
            z[:, :, hs] = 0
            return z
        return fn

    return [(f"blocks.{l}.attn.hook_z", make(hs)) for l, hs in by_layer.items()]


def run(config: Config, out_dir, *, fresh: bool = False) -> dict:
    from pyinterp.experiments.report import new_figure
    from pyinterp.models import Transformer

    cfg = config
    ex = Experiment(NAME, TITLE, CITATION, cfg, out_dir, fresh=fresh, summary=(
        "Attention-only transformers with one and two layers trained on the same text. Only the two-layer "
        "model can compose a previous-token head with a later head into an induction head; when it does, "
        "its in-context-learning score improves abruptly."))
    data = ex.step("data", lambda: {"rows": _lm.corpus_rows(cfg.vocab_size, cfg.n_ctx, cfg.train_rows + cfg.eval_rows,
                                                            cfg.seed, cfg.tokenizer)})
    eval_rows = data["rows"][:cfg.eval_rows]
    train_rows = data["rows"][cfg.eval_rows:]
    if cfg.rep_share > 0:
        train_rows = mixed_batches(cfg, train_rows)
    runs = {L: ex.step(f"train_{L}l", lambda L=L: _train(cfg, ex, L, train_rows, eval_rows)) for L in (1, 2)}

    def series(L, key):
        ev = runs[L]["evals"]
        return torch.tensor([e["step"] for e in ev]), [e[key] for e in ev]

    # induction and previous-token scores through training
    fig, axes = new_figure(2, 2, size=(4.6, 3.2))
    best_ind = {}
    for c, L in enumerate((1, 2)):
        steps, ind = series(L, "induction")
        ind = torch.tensor(ind)  # (E, L, H)
        _, prev = series(L, "prev")
        prev = torch.tensor(prev)
        best_ind[L] = ind.flatten(1).max(1).values
        for l in range(L):
            for h in range(cfg.n_heads):
                axes[0][c].plot(steps.numpy(), ind[:, l, h].numpy(), lw=1, label=f"L{l}H{h}")
                axes[1][c].plot(steps.numpy(), prev[:, l, h].numpy(), lw=1, label=f"L{l}H{h}")
        axes[0][c].set_title(f"{L}-layer: induction score per head", fontsize=9)
        axes[1][c].set_title(f"{L}-layer: previous-token score per head", fontsize=9)
        for r in (0, 1):
            axes[r][c].set_ylim(-0.02, 1.02); axes[r][c].set_xlabel("step")
        axes[0][c].legend(fontsize=6, ncol=2)
    b1, b2 = float(best_ind[1][-1]), float(best_ind[2][-1])
    final2 = torch.tensor(runs[2]["evals"][-1]["induction"])  # (2, H)
    top_layer = int(final2.flatten().argmax()) // cfg.n_heads
    # A layer-0 head cannot prefix-match in an attention-only model: a high score there would be a
    # positional shortcut (attending a fixed distance back), so the best head must be in layer 1.
    well_above = b2 > max(0.2, 2 * b1) and top_layer == 1
    # Phase change: the largest single jump between evaluations carries much of the rise.
    rise = best_ind[2] - best_ind[2][0]
    jumps = torch.diff(best_ind[2])
    jump_at = int(jumps.argmax()) if len(jumps) else 0
    abrupt = len(jumps) > 0 and float(jumps.max()) >= 0.3 * max(float(rise.max()), 1e-6)
    ind_check = ex.check("2-layer best induction score well above 1-layer's", well_above,
                         f"best head at the end: 2-layer {b2:.2f} (in layer {top_layer}), 1-layer {b1:.2f}")
    steps2, _ = series(2, "induction")
    ex.figure(fig, "head_scores.png", "Induction and previous-token scores through training",
              "The 2-layer model forms previous-token heads (layer 0) and induction heads (layer 1) in a short "
              "window of training (phase change); the 1-layer model's induction scores stay low.",
              check=ex.check("induction heads appear in the 2-layer model, not the 1-layer model, abruptly",
                             well_above and abrupt,
                             f"{ind_check.detail}; largest jump of the best 2-layer score between evaluations "
                             f"{float(jumps.max()) if len(jumps) else 0:.2f} at step {int(steps2[jump_at + 1]) if len(jumps) else 0} "
                             f"(of a total rise {float(rise.max()):.2f})"), headline=True)

    # ICL score, repeated-token loss, training loss
    fig, (a1, a2, a3) = new_figure(3, 1, size=(4.0, 3.2))
    icl_end = {}
    for L, col in ((1, "#1f4e99"), (2, "#d9822b")):
        steps, icl = series(L, "icl")
        _, rl = series(L, "rep_loss")
        icl_end[L] = icl[-1]
        a1.plot(steps.numpy(), icl, "-o", ms=3, color=col, label=f"{L}-layer")
        a2.plot(steps.numpy(), rl, "-o", ms=3, color=col, label=f"{L}-layer")
        c = torch.tensor(runs[L]["loss_curve"])
        a3.plot(c[:, 0].numpy(), c[:, 1].numpy(), color=col, lw=1, label=f"{L}-layer")
    if len(jumps):
        for a in (a1, a2, a3):
            a.axvspan(int(steps2[jump_at]), int(steps2[jump_at + 1]), color="#f4d03f", alpha=0.3)
    a1.set_title("ICL score (late − early token loss)", fontsize=9); a2.set_title("loss on repeated random tokens", fontsize=9)
    a3.set_title("training loss", fontsize=9)
    for a in (a1, a2, a3):
        a.set_xlabel("step"); a.legend(fontsize=7)
    icl_better = icl_end[2] < icl_end[1]
    ex.figure(fig, "icl.png", "In-context learning through training",
              "The 2-layer model's ICL score drops (more in-context learning) and its loss on repeated random tokens "
              "collapses in the same window as the induction heads form (shaded); the 1-layer model does neither.",
              check=ex.check("2-layer model learns more in context than the 1-layer model", icl_better,
                             f"final ICL score 1-layer {icl_end[1]:+.3f}, 2-layer {icl_end[2]:+.3f} nats"))

    # ablation of the 2-layer model's induction heads
    model = Transformer(model_config(cfg, 2))
    model.load_state_dict(runs[2]["state"])
    model = model.to(ex.device).eval()
    final = torch.tensor(runs[2]["evals"][-1]["induction"])  # (2, H)
    flat = final.flatten()
    top = float(flat.max())
    heads = [(int(i) // cfg.n_heads, int(i) % cfg.n_heads) for i in torch.nonzero(flat >= max(0.5 * top, 0.1)).flatten()]
    if not heads:
        heads = [(int(flat.argmax()) // cfg.n_heads, int(flat.argmax()) % cfg.n_heads)]
    low = flat.argsort()[: len(heads)]
    control = [(int(i) // cfg.n_heads, int(i) % cfg.n_heads) for i in low]
    rep = repeated(cfg)
    clean = evaluate(model, cfg, eval_rows, rep, fwd_hooks=())
    abl = evaluate(model, cfg, eval_rows, rep, fwd_hooks=zero_heads_hooks(heads))
    ctl = evaluate(model, cfg, eval_rows, rep, fwd_hooks=zero_heads_hooks(control))
    fig, (a1, a2) = new_figure(2, 1, size=(4.0, 3.2))
    labels = ["clean", "induction heads\nablated", "as many other\nheads ablated"]
    a1.bar(labels, [clean["icl"], abl["icl"], ctl["icl"]], color=["#888", "#c0392b", "#1f4e99"])
    a1.axhline(icl_end[1], color="k", ls=":", lw=1, label="1-layer model")
    a1.set_title("ICL score (nats)", fontsize=9); a1.legend(fontsize=7); a1.tick_params(axis="x", labelsize=7)
    a2.bar(labels, [clean["rep_loss"], abl["rep_loss"], ctl["rep_loss"]], color=["#888", "#c0392b", "#1f4e99"])
    a2.set_title("loss on repeated random tokens", fontsize=9); a2.tick_params(axis="x", labelsize=7)
    # The control is not part of the pass condition: with few heads, "as many other heads" can be all
    # of layer 0, whose heads feed the induction heads' keys (K-composition), so ablating them is
    # expected to break in-context copying too.
    collapse = abl["icl"] - clean["icl"] >= 0.5 * max(1e-6, icl_end[1] - clean["icl"])
    ex.figure(fig, "ablation.png", "Ablating the induction heads",
              "Zeroing the induction heads' outputs removes most of the in-context learning (ICL score moves toward "
              "the 1-layer model's) and the repeated-token loss rises. Ablating as many other heads does much "
              "less, unless those are the layer-0 heads the induction heads read from (K-composition), which "
              "breaks the same circuit.",
              check=ex.check("ICL collapses when the induction heads are ablated", collapse,
                             f"heads {heads}: ICL {clean['icl']:+.3f} → {abl['icl']:+.3f} (other heads {control}: "
                             f"{ctl['icl']:+.3f}; 1-layer {icl_end[1]:+.3f}); repeated-token loss "
                             f"{clean['rep_loss']:.2f} → {abl['rep_loss']:.2f}"))

    late = min(cfg.n_ctx - 1, round(cfg.n_ctx * 500 / 512))
    early = max(1, round(cfg.n_ctx * 50 / 512))
    ex.compare("ICL score, small attention-only models", "about −0.4 nats after the phase change (2-layer); 1-layer much less",
               f"2-layer {icl_end[2]:+.3f}, 1-layer {icl_end[1]:+.3f}", comparable=False,
               note=f"tokens {late} − {early} of {cfg.n_ctx}, not 500 − 50", key=True)
    ex.compare("phase change", "abrupt, ~2.5–5B tokens", f"largest jump at step {int(steps2[jump_at + 1]) if len(jumps) else 0} "
               f"(~{int(steps2[jump_at + 1]) * cfg.batch * cfg.n_ctx if len(jumps) else 0:,} tokens)", comparable=False,
               note="far fewer tokens, smaller models, repeated random sequences in every batch" if cfg.rep_share
               else "smaller models")
    ex.compare("induction heads in 1-layer models", "never", f"best 1-layer induction score {b1:.2f}", key=True)
    ex.setting("ICL token indices", "500 and 50", f"{late} and {early} (scaled to n_ctx={cfg.n_ctx})", "short contexts")
    ex.setting("model", "attention-only, 1–6 layers, d_model 768+", f"d_model {cfg.d_model}, {cfg.n_heads} heads, "
               f"n_ctx {cfg.n_ctx}, vocab {cfg.vocab_size} ({cfg.tokenizer} tokenizer)", "scale; a small vocabulary lets "
               "token embeddings train in few steps")
    ex.setting("training", "billions of tokens of web text", f"{cfg.steps} steps × {cfg.batch} × {cfg.n_ctx} tokens of the "
               "default corpus", "time budget")
    if cfg.rep_share:
        n_rep = min(cfg.batch, round(cfg.batch * cfg.rep_share))
        ex.setting("training data", "natural text", f"each batch of {cfg.batch}: {cfg.batch - n_rep} default-corpus rows + "
                   f"{n_rep} rows of fresh random tokens (ids < {cfg.rep_vocab or cfg.vocab_size}), each a segment of "
                   f"{max(2, (cfg.n_ctx - 8) // 4)}–{(cfg.n_ctx - 8) // 2} tokens tiled over the row from a random phase; "
                   "the induction-score and repeated-loss probes use the same token range", "makes induction worth "
                   "learning within this scale's few steps; random periods and phases keep positional shortcuts useless")
    ex.setting("initialisation", "not stated for these models", f"normal, std {model_config(cfg, 1).init_std:.3g} "
               "(TransformerLens's 0.8/sqrt(d_model) unless set)", "the library's GPT-2 std 0.02 is too small at "
               "d_model 64: the QK circuits start near the saddle at zero and the plateau outlasts the budget")
    metrics = {"tokenizer": _lm.tokenizer_info(_lm.tokenizer(cfg.vocab_size, cfg.tokenizer)),
               "best_induction": {"1l": best_ind[1].tolist(), "2l": best_ind[2].tolist()},
               "eval_steps": steps2.tolist(), "icl_final": icl_end,
               "ablation": {"heads": heads, "clean": clean, "ablated": abl, "control_heads": control, "control": ctl},
               "final_induction_2l": final.tolist()}
    return ex.finish(metrics)
