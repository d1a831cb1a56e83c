"""Shared pieces of the dictionary-learning reproductions (Towards / Scaling Monosemanticity,
Circuit Tracing).

Their configs derive from ``CorpusLMConfig`` (the corpus and the small GELU transformer trained on
it, with one budget per scale). Each helper is one checkpointed, resumable part of a run:

    train_rows, eval_rows, tok, d_vocab = corpus_split(cfg)              # (N, n_ctx) int64 rows
    model = train_corpus_lm(ex, cfg, train_rows, n_layers=1, d_vocab=d_vocab)
    rows, tok = corpus_rows(n_ctx=64, vocab_size=1024, max_rows=None)    # (N, n_ctx) int64
    model = train_lm(ex, "lm", TransformerConfig(...), rows, steps=800, batch_size=32, lr=3e-3)
    acts = collect_acts(ex, "acts", model, rows, "blocks.0.mlp.hook_post", max_rows=200_000)
    saes, hist = train_saes(ex, "saes", {"x4": ReLUSAE(...), ...}, acts, steps=1000, batch_size=512)
    stats = evaluate_sae(model, sae, eval_rows)    # L0, FVU, dead/dense, density, loss recovered

A step that is interrupted resumes from its own checkpoints (the LM trainer's and the SAE
trainer's); a finished step is loaded, never redone. Everything lives under the experiment's
``checkpoints/<config-hash>/`` directory.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import ClassVar, Dict, Optional, Sequence

import torch

from pyinterp.experiments._experiment import BaseConfig, Experiment

# The logit-effect helpers live in the library (feature dashboards use them too).
from pyinterp.sae.feature_dashboards import fold_ln_final, logit_effects  # noqa: F401


def _progress() -> bool:
    from pyinterp._progress import enabled

    return enabled()


# ----------------------------------------------------------------------------- data + model
@dataclasses.dataclass
class CorpusLMConfig(BaseConfig):
    """The default corpus and the small GELU transformer trained on it before its activations
    are read. A paper's config derives from this and sets its own model shape (n_layers, d_mlp,
    ...) and dictionaries; the smaller scales share one LM budget."""
    vocab_size: int = 4096
    n_ctx: int = 128
    max_rows: Optional[int] = None
    d_model: int = 256
    n_heads: int = 4
    lm_steps: int = 20_000
    lm_batch: int = 64
    lm_lr: float = 1e-3
    eval_rows: int = 512

    SCALES: ClassVar[Dict[str, dict]] = {
        "quick": dict(vocab_size=1024, n_ctx=64, d_model=64, n_heads=4, lm_steps=600, lm_batch=32,
                      lm_lr=3e-3, eval_rows=128),
        "tiny": dict(vocab_size=512, n_ctx=32, max_rows=1500, d_model=32, n_heads=2, lm_steps=120,
                     lm_batch=16, lm_lr=5e-3, eval_rows=24),
    }


@dataclasses.dataclass
class CorpusSAEConfig(CorpusLMConfig):
    """CorpusLMConfig plus dictionaries trained on the LM's activations at one hook
    (``train_dictionaries``): how many activations, and the dictionaries' training budget."""
    act_rows: int = 4_000_000
    sae_steps: int = 30_000
    sae_batch: int = 4096
    sae_lr: float = 1e-3

    SCALES: ClassVar[Dict[str, dict]] = {
        "quick": dict(act_rows=120_000, sae_batch=256, sae_lr=2e-3),
        "tiny": dict(act_rows=16_000, sae_steps=250, sae_batch=256, sae_lr=3e-3),
    }


def corpus_split(cfg: CorpusLMConfig):
    """Seed torch with cfg.seed; the corpus rows split into (train, eval), the tokenizer and the
    model's vocabulary size (covering every token id in the rows)."""
    torch.manual_seed(cfg.seed)
    rows, tok = corpus_rows(cfg.n_ctx, cfg.vocab_size, cfg.max_rows, cfg.seed)
    train_rows, eval_rows = split_rows(rows, cfg.eval_rows, cfg.seed)
    return train_rows, eval_rows, tok, max(cfg.vocab_size, int(rows.max()) + 1)


def train_corpus_lm(ex: Experiment, cfg: CorpusLMConfig, data, **model_kw):
    """Train (or load) cfg's GELU transformer as step "lm" on ``data`` (rows, or step -> batch);
    ``model_kw``: the rest of its TransformerConfig (d_vocab, n_layers, d_mlp, ...)."""
    from pyinterp.models import TransformerConfig

    model_cfg = TransformerConfig(d_model=cfg.d_model, n_heads=cfg.n_heads, n_ctx=cfg.n_ctx, act_fn="gelu",
                                  seed=cfg.seed, **model_kw)
    return train_lm(ex, "lm", model_cfg, data, steps=cfg.lm_steps, batch_size=cfg.lm_batch, lr=cfg.lm_lr,
                    seed=cfg.seed)


def train_dictionaries(ex: Experiment, cfg: CorpusSAEConfig, model, rows: torch.Tensor, hook: str, make_saes,
                       **train_kw):
    """Collect cfg.act_rows activations of ``model`` at ``hook`` over ``rows`` (step "acts"),
    then train the dictionaries of ``make_saes()`` on them in one pass (step "saes"; a latent is
    dead after 50 batches without firing). Returns ({name: dictionary}, trainer history)."""
    acts_dir = collect_acts(ex, "acts", model, rows, [hook], max_rows=cfg.act_rows, batch_size=cfg.lm_batch,
                            seed=cfg.seed)
    return train_saes(ex, "saes", make_saes, acts_dir, steps=cfg.sae_steps, batch_size=cfg.sae_batch,
                      lr=cfg.sae_lr, seed=cfg.seed, dead_window_tokens=max(cfg.sae_batch * 50, 1), **train_kw)


def corpus_rows(n_ctx: int, vocab_size: int, max_rows: Optional[int] = None, seed: int = 0):
    """The default corpus as packed rows (cached tokens): ((N, n_ctx) int64, tokenizer);
    ``max_rows`` keeps a seeded random subset. Deterministic."""
    from pyinterp import data

    rows = data.default_token_rows(n_ctx=n_ctx, vocab_size=vocab_size)
    if max_rows is not None and max_rows < rows.shape[0]:
        g = torch.Generator().manual_seed(seed + 31)
        rows = rows[torch.randperm(rows.shape[0], generator=g)[:max_rows]]
    return rows, data.get_tokenizer(vocab_size=vocab_size)


def split_rows(rows: torch.Tensor, eval_rows: int, seed: int):
    """Seeded split of rows into (train, eval); eval gets ``eval_rows`` rows."""
    g = torch.Generator().manual_seed(seed + 777)
    perm = torch.randperm(rows.shape[0], generator=g)
    eval_rows = min(eval_rows, rows.shape[0] // 5)
    return rows[perm[eval_rows:]], rows[perm[:eval_rows]]


def train_lm(ex: Experiment, name: str, model_cfg, rows: torch.Tensor, *, steps: int, batch_size: int,
             lr: float, seed: int = 0):
    """Train (or load) a pyinterp Transformer on ``rows``; returns it in eval mode on ex.device.

    The training loop checkpoints under the step directory, so an interrupted run resumes."""
    from pyinterp.models import TrainConfig, Transformer, train

    def fit():
        model = Transformer(model_cfg).to(ex.device)
        tc = TrainConfig(max_steps=steps, batch_size=batch_size, lr=lr, warmup_steps=max(1, min(100, steps // 10)),
                         seed=seed, checkpoint_every=max(50, steps // 5), log_every=max(1, steps // 50),
                         progress=_progress())
        res = train(model, rows, tc, out_dir=ex.steps.dir / f"{name}_train", fresh=ex.steps.fresh)
        return {"state": {k: v.detach() for k, v in model.state_dict().items()},
                "loss_history": res.history.get("loss", [])}

    r = ex.step(name, fit)
    model = Transformer(model_cfg)
    model.load_state_dict(r["state"])
    model.to(ex.device).eval()
    model.loss_history = r["loss_history"]
    return model


def collect_acts(ex: Experiment, name: str, model, rows: torch.Tensor, hook_names: Sequence[str], *,
                 max_rows: int, batch_size: int = 32, shard_rows: int = 1 << 15, seed: int = 0) -> Path:
    """Collect activations at ``hook_names`` into a shard directory (resumable); returns it."""
    from pyinterp.data import shuffled_batches
    from pyinterp.sae import collect

    root = ex.steps.dir / name
    batches = (b.to(ex.device) for b in shuffled_batches(rows, batch_size, seed=seed, epochs=None))
    collect(root, model, batches, hook_names=list(hook_names), shard_rows=shard_rows, max_rows=max_rows,
            seed=seed, resume=not ex.steps.fresh, progress=_progress())
    return root


# ----------------------------------------------------------------------------- dictionaries
def sae_state(sae) -> dict:
    return {"state": {k: v.detach() for k, v in sae.state_dict().items()}, "cfg": json.dumps(sae.cfg.to_dict())}


def sae_from_state(d: dict, device="cpu"):
    from pyinterp.sae import SAEConfig, build

    sae = build(SAEConfig.from_dict(json.loads(d["cfg"])), device=device)
    sae.load_state_dict(d["state"])
    return sae.eval()


def train_saes(ex: Experiment, name: str, make_saes, acts_dir: Path, *, steps: int, batch_size: int,
               lr: float, seed: int = 0, hook_names=None, **train_kw):
    """Train several dictionaries at once from one pass over the store (or load them).

    make_saes: () -> {name: module}. Returns ({name: module (eval)}, trainer history)."""
    from pyinterp.sae import ActivationStore, SAETrainer, TrainConfig
    from pyinterp.sae.checkpoint import latest

    def fit():
        ckdir = ex.steps.dir / f"{name}_train"
        store = ActivationStore(acts_dir, batch_size=batch_size, seed=seed, device=ex.device,
                                hook_names=hook_names)
        if not ex.steps.fresh and ckdir.exists() and latest(ckdir) is not None:
            trainer = SAETrainer.resume(ckdir, store, device=ex.device)
        else:
            saes = {k: s.to(ex.device) for k, s in make_saes().items()}
            tc = TrainConfig(steps=steps, lr=lr, seed=seed, checkpoint_dir=str(ckdir),
                             checkpoint_every=max(100, steps // 4), log_every=max(1, steps // 40),
                             progress=_progress(), **train_kw)
            trainer = SAETrainer(saes, store, tc, fresh=ex.steps.fresh)
        trainer.run()
        return {"saes": {k: sae_state(s) for k, s in trainer.saes.items()},
                "history": json.dumps(trainer.history)}

    r = ex.step(name, fit)
    saes = {k: sae_from_state(v, ex.device) for k, v in r["saes"].items()}
    # a loaded step's keys come back in file order: order by architecture, then size
    saes = dict(sorted(saes.items(), key=lambda kv: (kv[1].cfg.architecture, kv[1].d_sae)))
    return saes, json.loads(r["history"])


@torch.no_grad()
def dense_codes(sae, x: torch.Tensor, chunk: int = 4096, features=None) -> torch.Tensor:
    """The code f(x) in the dictionary's (normalised) units: (N, d_sae), or (N, len(features))
    for the given feature ids only (so a huge dictionary never needs an (N, d_sae) tensor).
    x: (N, d_in)."""
    cols = None
    if features is not None:
        features = torch.as_tensor(features, dtype=torch.long, device=x.device)
        cols = torch.full((sae.d_sae + 1,), len(features), dtype=torch.long, device=x.device)
        cols[features] = torch.arange(len(features), device=x.device)
    width = sae.d_sae if cols is None else len(features) + 1  # last column: features not asked for
    out = []
    for i in range(0, x.shape[0], chunk):
        v, idx = sae.encode(x[i:i + chunk])
        idx = idx.long() if cols is None else cols[idx.long()]
        f = torch.zeros(v.shape[0], width, dtype=torch.float32, device=v.device)
        f.scatter_add_(1, idx, v.float())
        out.append(f if cols is None else f[:, :-1])
    return torch.cat(out)


@torch.no_grad()
def hook_acts(model, rows: torch.Tensor, hook: str, batch: int = 64) -> torch.Tensor:
    """Activations at ``hook`` for every token of ``rows``: (N, T, d)."""
    out = []
    for i in range(0, rows.shape[0], batch):
        _, cache = model.run_with_cache(rows[i:i + batch], names_filter=[hook])
        out.append(cache[hook].float())
    return torch.cat(out)


@torch.no_grad()
def evaluate_sae(model, sae, hook: str, eval_rows: torch.Tensor, acts: torch.Tensor, batch: int = 64) -> dict:
    """L0, FVU, MSE, dead and dense fractions, density, histogram and loss recovered.

    acts: (N, d_in) activations of ``eval_rows`` at ``hook`` (already computed)."""
    from pyinterp.sae import metrics

    chunks = [acts[i:i + 4096] for i in range(0, acts.shape[0], 4096)]
    stats = metrics.evaluate(sae, chunks)
    lr = metrics.loss_recovered(model, [eval_rows[i:i + batch] for i in range(0, eval_rows.shape[0], batch)],
                                sae=sae, hook_name=hook)
    stats.update(lr)
    stats["eval_loss"] = float(sum(float(sae.loss(c).total) * c.shape[0] for c in chunks) / acts.shape[0])
    return stats


# ----------------------------------------------------------------------------- feature reading
@torch.no_grad()
def concentration(acts: torch.Tensor, tokens: torch.Tensor, k: int):
    """The monosemanticity proxy shared with the SoLU reproduction (:mod:`neuron_proxy`):
    per unit, the share of its top-k positions whose token is its most common one.

    acts: (N_tok, U); tokens: (N_tok,) -> (concentration (U,), top values (U, k), top positions (U, k))."""
    from pyinterp.experiments import neuron_proxy

    v, i = neuron_proxy.top_activations(acts, k)  # (k, U)
    return neuron_proxy.token_concentration(tokens[i]), v.T.contiguous(), i.T.contiguous()

