"""Persona Vectors (Chen et al. 2025): monitoring and controlling character traits.

Definitions (the paper's):
  * a trait is given by pairs of positive / negative system prompts, extraction questions and
    held-out evaluation questions; responses are sampled under each prompt and judged 0–100 for
    trait expression and coherence; positive responses with trait ≥ 50 and negative ones with
    trait < 50, both with coherence ≥ 50, are kept;
  * the persona vector at layer l is the mean over kept positive responses of their mean
    response-token residual stream, minus the same for the kept negative responses;
  * steering adds coef · v at one layer on response tokens (paper: ~+2 induces, ~−1.5 suppresses);
  * monitoring projects the last prompt token onto v (a·v/‖v‖); the paper reports a correlation
    with the judged trait expression of the response of r ≈ 0.75–0.83;
  * the projection difference of a data set is the mean over its samples of proj(data set response)
    − proj(the model's own response to the same prompt); it predicts the persona shift finetuning
    on that data causes (finetuning shift vs trait change r ≈ 0.76–0.97);
  * preventative steering adds +coef · v (~5) during finetuning, evaluated without it; it limits the
    trait shift while keeping general ability (MMLU) closer to the base model than inference-time
    steering does.

Here, by default, the project's own small transformer is trained on a synthetic chat corpus
(:mod:`pyinterp.experiments.persona_corpus`) where system prompts select personas, and the whole
pipeline of :mod:`pyinterp.persona` runs on it. With ``model=PATH`` (``--model``) the same
pipeline runs on a Hugging Face causal LM loaded offline from a local directory. Responses are
judged by an independent classifier (:mod:`pyinterp.experiments.persona_judge`: trained on
labelled text written apart from the demo corpus, its held-out accuracy on the page), or by a
judge given as ``module:function`` (``--judge``).
"""
from __future__ import annotations

import copy as _copy
import dataclasses
from pathlib import Path
from typing import ClassVar, Dict, List, Tuple

import torch

from pyinterp.experiments import persona_corpus as pc
from pyinterp.experiments._experiment import BaseConfig, Experiment, fmt
from pyinterp.experiments._io import ExperimentError

NAME = "persona"
TITLE = "Persona Vectors"
CITATION = ("Chen, Arditi, Sleight, Evans, Lindsey 2025, <i>Persona Vectors: Monitoring and Controlling "
            "Character Traits in Language Models</i>, <a href='https://arxiv.org/abs/2507.21509'>"
            "arXiv:2507.21509</a>")
REQUIRES = ("tokenizers",)  # the BPE of its corpus


@dataclasses.dataclass
class Config(BaseConfig):
    model: str = ""  # a local Hugging Face model directory; "" trains the demo model
    judge: str = ""  # "module:function"; "" = the demo's independent classifier judge (persona_judge)
    judge_holdout: float = 0.2  # share of that judge's sentence frames and topics held out to measure it
    trait: str = "optimistic"  # a demo trait of the synthetic corpus (optimistic, evil)
    # demo model and corpus
    n_docs: int = 40_000
    vocab_size: int = 1024
    n_layers: int = 4
    d_model: int = 256
    n_heads: int = 8
    d_mlp: int = 1024
    n_ctx: int = 128
    sentences: Tuple[int, int] = (2, 4)  # sentences per response
    steps: int = 6000
    batch: int = 64
    lr: float = 1e-3
    # pipeline (the paper's sizes: 5 prompt pairs, 20 + 20 questions, ~10 samples)
    n_questions: int = 20
    n_eval_questions: int = 20
    n_samples: int = 10
    eval_samples: int = 4
    max_new_tokens: int = 64
    temperature: float = 1.0
    gen_batch: int = 64
    layer_alpha: float = 2.0
    coefs: Tuple[float, ...] = (-3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
    monitor_questions: int = 20
    screen_size: int = 240
    contamination: Tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
    ft_steps: int = 300
    ft_batch: int = 16
    ft_lr: float = 3e-4
    prevent_alpha: float = 5.0
    inference_alpha: float = -1.5
    general_docs: int = 256

    SCALES: ClassVar[Dict[str, dict]] = {
        "quick": dict(n_docs=4000, vocab_size=1024, n_layers=3, d_model=64, n_heads=4, d_mlp=256,
                      n_ctx=80, sentences=(1, 3), steps=800, batch=32, lr=5e-3, n_questions=10, n_eval_questions=10,
                      n_samples=2, eval_samples=2, max_new_tokens=40, layer_alpha=6.0,
                      coefs=(-8.0, -6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0, 8.0), monitor_questions=6,
                      screen_size=480, ft_steps=60, ft_batch=16, ft_lr=1e-3, general_docs=96),
        "tiny": dict(n_docs=1500, vocab_size=1024, n_layers=2, d_model=48, n_heads=4, d_mlp=192,
                     n_ctx=56, sentences=(1, 2), steps=400, batch=32, lr=1e-2, n_questions=4,
                     n_eval_questions=6, n_samples=1, eval_samples=1, max_new_tokens=28,
                     layer_alpha=8.0, coefs=(-8.0, 0.0, 8.0), monitor_questions=3, screen_size=100,
                     ft_steps=25, ft_batch=8, ft_lr=1e-3, general_docs=32),
    }


# -- model and judge -------------------------------------------------------------------------

def _progress() -> bool:
    from pyinterp._progress import enabled

    return enabled()


def check_config(cfg: Config):
    """Validate the user-facing settings before any work: the model directory, the judge spec
    and the trait (ExperimentError naming the option). Returns the ``--judge`` function, or None
    for the built-in judge (trained in the run's ``judge`` step)."""
    if cfg.trait not in pc.TRAITS:
        raise ExperimentError(f"trait {cfg.trait!r} is not a demo trait; demo traits: {sorted(pc.TRAITS)}")
    if cfg.model:
        p = Path(cfg.model)
        if not p.is_dir():
            raise ExperimentError(f"--model {cfg.model!r}: directory does not exist (give a local "
                                  "Hugging Face model directory)")
        if not (p / "config.json").is_file():
            raise ExperimentError(f"--model {cfg.model!r}: no config.json there, not a Hugging Face "
                                  "model directory")
    try:
        return pc.load_judge(cfg.judge) if cfg.judge else None
    except ValueError as e:
        raise ExperimentError(f"--judge: {e}") from None


def _train_judge(cfg: Config) -> dict:
    from pyinterp.experiments import persona_judge

    clf, report = persona_judge.build(cfg.trait, cfg.judge_holdout, cfg.seed)
    return {**clf.state_dict(), "report": report}


def _judge(cfg: Config, ex: Experiment, user_judge):
    """(judge function, its report): the ``--judge`` function, or the built-in classifier judge
    trained (once; a checkpointed step) on its own labelled text."""
    if user_judge is not None:
        return user_judge, {"name": cfg.judge, "held_out_accuracy": None}
    from pyinterp.experiments import persona_judge
    from pyinterp.persona import ClassifierJudge

    res = ex.step("judge", lambda: _train_judge(cfg))
    clf = ClassifierJudge(cfg.trait).load_state_dict({"weight": res["weight"], "bias": res["bias"]})
    return persona_judge.on_responses(clf), res["report"]


def _judge_section(ex: Experiment, info: dict) -> None:
    if info.get("held_out_accuracy") is None:
        ex.section("Judge", f"<p>Trait expression is scored by <code>{_esc(info['name'])}</code> "
                            "(given with <code>--judge</code>); coherence by the text-quality heuristic.</p>")
        return
    rows = "".join(f"<tr><td>{_esc(t)}</td><td>{_esc(lab)}</td></tr>" for t, lab in info["examples"])
    ex.section("Judge", (
        "<p>Trait expression is scored 0–100 by an <b>independent classifier judge</b> "
        "(<code>pyinterp.persona.ClassifierJudge</code>: a linear classifier over words, word pairs and "
        "character n-grams), trained on "
        f"{info['train_texts']:,} labelled texts (trait / opposite / neutral) written apart from the demo "
        "corpus — other sentence frames, other topics, a broader vocabulary — which the demo model never saw "
        "(<code>pyinterp/experiments/persona_judge.py</code>); score = 50 + 50·(P(trait) − P(opposite)). "
        "The demo corpus's lexicon judge is not used: it would score the generator against itself.</p>"
        "<table><tr><th>judge's own accuracy</th><th>texts</th><th>accuracy (3 labels)</th></tr>"
        f"<tr><td>held-out labelled text (new sentence frames and topics)</td><td>{info['held_out_texts']}</td>"
        f"<td><b>{info['held_out_accuracy']:.1%}</b></td></tr>"
        f"<tr><td>the demo corpus's own labelled responses (never trained on)</td>"
        f"<td>{info['demo_corpus_texts']}</td><td><b>{info['demo_corpus_accuracy']:.1%}</b></td></tr></table>"
        "<p class='small'>Examples of its training text:</p>"
        f"<table><tr><th>text</th><th>label</th></tr>{rows}</table>"
        "<p class='small'>Coherence is scored by a text-quality heuristic (share of word characters × "
        "share of distinct words), as before.</p>"))


def _model_config(cfg: Config, vocab: int):
    from pyinterp.models import TransformerConfig

    return TransformerConfig(n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads,
                             d_mlp=cfg.d_mlp, d_vocab=vocab, n_ctx=cfg.n_ctx, act_fn="gelu", seed=cfg.seed)


def _corpus(cfg: Config) -> dict:
    """Synthetic chat documents -> a BPE tokenizer trained on them and (N, n_ctx) rows, each one
    document followed by end tokens (so the model learns to stop and then keep emitting them)."""
    from pyinterp.data.tokenizer import train_bpe

    docs = pc.make_corpus(cfg.n_docs + cfg.general_docs, cfg.seed, tuple(cfg.sentences))
    texts = [pc.doc_text(d) for d in docs]
    tok = train_bpe(texts, vocab_size=cfg.vocab_size)
    eot = tok.eos_token_id
    rows = torch.full((len(texts), cfg.n_ctx), eot, dtype=torch.long)
    lengths = []
    for i, ids in enumerate(tok.encode_batch(texts)):
        ids = ids[: cfg.n_ctx - 1]
        rows[i, : len(ids)] = torch.tensor(ids)
        lengths.append(len(ids))
    return {"tokenizer": tok.backend.to_str(), "rows": rows,
            "lengths": torch.tensor(lengths), "examples": docs[:6]}


def _tokenizer(corpus: dict):
    from tokenizers import Tokenizer

    from pyinterp.data.tokenizer import BPETokenizer

    return BPETokenizer(Tokenizer.from_str(corpus["tokenizer"]))


def _train(cfg: Config, ex: Experiment, corpus: dict) -> dict:
    from pyinterp.models import TrainConfig, Transformer, train

    rows = corpus["rows"][cfg.general_docs:]
    model = Transformer(_model_config(cfg, _tokenizer(corpus).vocab_size)).to(ex.device)
    tc = TrainConfig(max_steps=cfg.steps, batch_size=cfg.batch, lr=cfg.lr,
                     warmup_steps=max(1, cfg.steps // 20), seed=cfg.seed,
                     checkpoint_every=max(50, cfg.steps // 5), log_every=max(1, cfg.steps // 100),
                     progress=_progress())
    res = train(model, rows, tc, out_dir=ex.steps.dir / "train_model", fresh=ex.steps.fresh)
    return {"state": {k: v.detach().cpu() for k, v in res.model.state_dict().items()},
            "loss_curve": res.history["loss"]}


def _demo_model(cfg: Config, corpus: dict, state: dict, device):
    from pyinterp.models import Transformer

    tok = _tokenizer(corpus)
    m = Transformer(_model_config(cfg, tok.vocab_size))
    m.load_state_dict(state)
    m.tokenizer = tok
    m.pad_token_id = tok.eos_token_id
    return m.to(device).eval()


def _hf_model(cfg: Config, device):
    from pyinterp.models import from_hf

    try:
        model = from_hf(cfg.model, device=device)
    except (FileNotFoundError, ValueError) as e:
        raise ExperimentError(f"--model {cfg.model!r}: {e}") from None
    if model.tokenizer is None:
        raise ExperimentError(f"--model {cfg.model!r}: no tokenizer found in the directory "
                              "(tokenizer.json / tokenizer_config.json)")
    return model


# -- pipeline steps ----------------------------------------------------------------------------

def _gen(cfg: Config, n_samples: int = None, seed: int = 0) -> dict:
    return dict(n_samples=cfg.eval_samples if n_samples is None else n_samples,
                max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                batch_size=cfg.gen_batch, seed=cfg.seed + seed)


def _coherence_of(samples, trait) -> float:
    vals = [pc.coherence(s.question, s.text, trait) for s in samples]
    return sum(vals) / max(1, len(vals))


def _extract(cfg, model, trait, judge) -> dict:
    from pyinterp import persona

    pv = persona.extract_persona_vectors(
        model, trait, judge=judge, coherence_judge=pc.coherence, n_samples=cfg.n_samples,
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, batch_size=cfg.gen_batch,
        seed=cfg.seed, progress=_progress())
    # Responses end at the model's end token (as the paper's chat responses end at EOS); the
    # demo model keeps emitting end tokens until max_new_tokens, so the mean response activation
    # is taken over the response up to and including its first end token.
    eos = _eos(model)
    if eos is not None:
        for side in ("positive", "negative"):
            for smp in pv.samples[side]:
                if eos in smp.response_ids:
                    smp.response_ids = smp.response_ids[: smp.response_ids.index(eos) + 1]
        stats = pv.stats
        pv = persona.persona_vectors_from_samples(model, pv.samples["positive"], pv.samples["negative"],
                                                  pv.layers, trait.name, batch_size=cfg.gen_batch)
        pv.stats = stats
    ex_pos = [s.text.split(pc.EOT)[0] for s in pv.samples["positive"][:3]]
    ex_neg = [s.text.split(pc.EOT)[0] for s in pv.samples["negative"][:3]]
    return {"vectors": pv.vectors, "pos_mean": pv.pos_mean, "neg_mean": pv.neg_mean,
            "layers": pv.layers, "stats": pv.stats, "examples": {"positive": ex_pos, "negative": ex_neg}}


def _pv(ext: dict, trait):
    from pyinterp.persona import PersonaVectors

    return PersonaVectors(trait=trait.name, layers=list(ext["layers"]), vectors=ext["vectors"],
                          pos_mean=ext["pos_mean"], neg_mean=ext["neg_mean"], stats=ext["stats"])


def _layers(cfg, model, pv, trait, judge) -> dict:
    from pyinterp import persona

    # Candidates: every layer but the last (the paper's choices are middle layers; the last
    # layer's residual feeds the unembedding, and at this scale its response-token projections
    # track the next token more than the persona, which breaks data screening).
    cand = pv.layers[:-1] if len(pv.layers) > 1 else pv.layers
    eff = persona.steering_effect(model, pv, trait, judge=judge, alpha=cfg.layer_alpha, layers=cand,
                                  positions="response", **_gen(cfg, seed=1))
    return {"baseline": eff["baseline"], "scores": [eff["scores"].get(l, float("nan")) for l in pv.layers],
            "best_layer": eff["best_layer"], "candidates": cand}


def _dose(cfg, model, v, layer, trait, judge) -> dict:
    from pyinterp import persona

    scores, coh, examples = [], [], {}
    device = next(model.parameters()).device
    for c in cfg.coefs:
        with persona.steer(model, v.to(device), layer, c, positions="response"):
            s, samples = persona.trait_score(model, trait, judge, system=pc.NEUTRAL_SYSTEM,
                                             **_gen(cfg, seed=2))
        scores.append(s)
        coh.append(_coherence_of(samples, trait))
        examples[f"{c:+g}"] = samples[0].text.split(pc.EOT)[0]
    return {"coefs": list(cfg.coefs), "scores": scores, "coherence": coh, "examples": examples}


def _monitor(cfg, model, pv, layer, trait, judge) -> dict:
    from pyinterp import persona

    prompts = pc.graded_prompts(trait.name)
    qs = list(trait.eval_questions[: cfg.monitor_questions])
    res = persona.monitor(model, pv, trait, layer, judge=judge, system_prompts=[p for p, _ in prompts],
                          questions=qs, **_gen(cfg, seed=3))
    levels = {p: lv for p, lv in prompts}
    lv = torch.tensor([levels[s.system] for s in res.samples])
    # one point per (system prompt, question): mean score over its samples
    n = len(res.samples) // (len(prompts) * len(qs))
    proj = res.projections.view(-1, n).mean(1)
    score = res.scores.view(-1, n).mean(1)
    lvl = lv.view(-1, n)[:, 0]
    return {"projection": proj, "score": score, "level": lvl, "r_samples": res.correlation,
            "r": persona.pearson(proj, score)}


def _dataset_samples(model, items, eos_id):
    from pyinterp.persona import Sample
    from pyinterp.persona.data import chat_prompt, encode

    tok = model.tokenizer
    out = []
    for q, r, _ in items:
        ids = encode(tok, " " + r) + ([eos_id] if eos_id is not None else [])
        out.append(Sample(chat_prompt(tok, pc.NEUTRAL_SYSTEM, q), ids, q, pc.NEUTRAL_SYSTEM, r))
    return out


def _eos(model):
    return getattr(model.tokenizer, "eos_token_id", None)


def _screen_questions(cfg) -> List[str]:
    """``screen_size`` questions of the screening split; beyond its 120 questions they repeat
    (each repeat gets its own response in the data sets, and its own sampled model response)."""
    pool = pc.questions("screen", min(cfg.screen_size, len(pc._topics("screen")) * len(pc.QUESTION_TEMPLATES)),
                        cfg.seed)
    return [pool[i % len(pool)] for i in range(cfg.screen_size)]


def _screen(cfg, model, v, layer, trait) -> dict:
    from pyinterp import persona

    qs = _screen_questions(cfg)
    eos = _eos(model)
    own = persona.generate_responses(model, [(pc.NEUTRAL_SYSTEM, q) for q in qs], **_gen(cfg, 1, seed=4),
                                     stop_tokens=[eos] if eos is not None else None)
    for s in own:  # a response needs one token to be projected
        s.response_ids = s.response_ids or [s.prompt_ids[-1]]
    per_set, means, trait_frac = {}, [], []
    for f in cfg.contamination:
        items = pc.contaminated_set(trait.name, qs, f, cfg.seed, tuple(cfg.sentences))
        data = _dataset_samples(model, items, _eos(model))
        res = persona.projection_difference(model, data, v, layer, own=own, batch_size=cfg.gen_batch)
        per_set[f"{f:g}"] = res.per_sample
        means.append(res.mean)
        trait_frac.append(sum(t for _, _, t in items) / len(items))
    return {"fractions": list(cfg.contamination), "means": means, "per_sample": per_set,
            "trait_fraction": trait_frac}


def _general_samples(cfg, model, corpus_docs) -> list:
    from pyinterp.persona import Sample
    from pyinterp.persona.data import chat_prompt, encode

    tok, eos = model.tokenizer, _eos(model)
    return [Sample(chat_prompt(tok, d["system"], d["question"]),
                   encode(tok, " " + d["response"]) + ([eos] if eos is not None else []))
            for d in corpus_docs]


@torch.no_grad()
def _general_loss(model, samples, batch: int) -> float:
    """Mean response-token loss on held-out documents of every persona (a general-ability proxy:
    does the model still follow all its system prompts?)."""
    from pyinterp.persona.data import teacher_forced_batches
    from pyinterp.persona.preventative import response_loss

    tot, n = 0.0, 0
    for idx, t, a, s in teacher_forced_batches(model, samples, batch):
        tot += float(response_loss(model, torch.stack([t, a, s.long()], 1))) * len(idx)
        n += len(idx)
    return tot / max(1, n)


def _measure(cfg, m, v, layer, trait, judge, general, steer_alpha: float = 0.0) -> dict:
    import contextlib

    from pyinterp import persona

    prompts = [(pc.NEUTRAL_SYSTEM, q) for q in trait.eval_questions]
    device = next(m.parameters()).device
    ctx = (persona.steer(m, v.to(device), layer, steer_alpha, positions="response")
           if steer_alpha else contextlib.nullcontext())
    with ctx:
        score, samples = persona.trait_score(m, trait, judge, system=pc.NEUTRAL_SYSTEM, **_gen(cfg, seed=5))
    proj = float(persona.last_prompt_projection(m, prompts, v.to(device), layer).mean())
    ctx = (persona.steer(m, v.to(device), layer, steer_alpha, positions="all")
           if steer_alpha else contextlib.nullcontext())
    with ctx:
        loss = _general_loss(m, general, cfg.gen_batch)
    return {"trait_score": score, "projection": proj, "general_loss": loss,
            "coherence": _coherence_of(samples, trait),
            "example": samples[0].text.split(pc.EOT)[0]}


def _finetune(cfg, model, v, layer, trait, judge, general, fraction: float, alpha: float,
              inference_alpha: float = 0.0) -> dict:
    from pyinterp import persona
    from pyinterp.models import TrainConfig

    qs = _screen_questions(cfg)
    data = _dataset_samples(model, pc.contaminated_set(trait.name, qs, fraction, cfg.seed, tuple(cfg.sentences)), _eos(model))
    tc = TrainConfig(max_steps=cfg.ft_steps, batch_size=cfg.ft_batch, lr=cfg.ft_lr,
                     warmup_steps=max(1, cfg.ft_steps // 10), seed=cfg.seed, progress=False)
    device = next(model.parameters()).device
    kw = dict(vector=v.to(device), layer=layer, alpha=alpha) if alpha else {}
    copy = _copy.deepcopy(model)  # HookedHF.__deepcopy__ re-binds the hook sites to the copy
    m = persona.finetune(copy, data, cfg=tc, copy=False, **kw)
    out = {"eval": _measure(cfg, m, v, layer, trait, judge, general)}
    if inference_alpha:
        out["inference"] = _measure(cfg, m, v, layer, trait, judge, general, inference_alpha)
    del m
    return out


# -- figures and page --------------------------------------------------------------------------

def _fig_layers(ex, ext, lay):
    from pyinterp.experiments.report import new_figure

    layers = list(ext["layers"])
    fig, (a1, a2) = new_figure(2, 1, size=(4.4, 3.4))
    a1.bar([str(l) for l in layers], ext["vectors"].norm(dim=-1).numpy(), color="#1f4e99")
    a1.set_xlabel("layer"); a1.set_ylabel("‖persona vector‖")
    scores = [x if isinstance(x, (int, float)) and x == x else 0.0 for x in lay["scores"]]  # not candidates: 0
    a2.bar([str(l) for l in layers], scores, color="#d9822b", label=f"steered (+{ex.config.layer_alpha:g}·v)")
    a2.axhline(lay["baseline"], color="k", ls=":", label="unsteered")
    a2.set_xlabel("layer"); a2.set_ylabel("trait score"); a2.set_ylim(0, 100); a2.legend(fontsize=7, loc="lower right")
    best = lay["best_layer"]
    gain = lay["scores"][layers.index(best)] - lay["baseline"]
    ex.figure(fig, "layers.png", "Persona vector per layer and layer choice by steering effect",
              "The paper picks the layer whose vector, added on response tokens, raises the trait score most (candidates here: every layer but the last).",
              check=ex.check("steering at the chosen layer raises the trait score", gain > 0,
                             f"layer {best}: {lay['baseline']:.1f} → {lay['scores'][layers.index(best)]:.1f}"))


def _fig_dose(ex, dose, layer):
    from pyinterp.experiments.report import new_figure

    c, s = dose["coefs"], dose["scores"]
    fig, ax = new_figure(size=(5.6, 3.8))
    ax.plot(c, s, "o-", color="#b03030", label="trait score")
    ax.plot(c, dose["coherence"], "s--", color="#777777", label="coherence")
    ax.axvline(0, color="k", lw=0.5)
    ax.set_xlabel(f"steering coefficient (×v, layer {layer}, response tokens)"); ax.set_ylabel("judge score (0–100)")
    ax.set_ylim(-2, 102); ax.legend(fontsize=8)
    i0 = c.index(0.0) if 0.0 in c else None
    hi, lo = s[c.index(max(c))], s[c.index(min(c))]
    ok = i0 is not None and hi > s[i0] > lo if i0 is not None else hi > lo
    base = s[i0] if i0 is not None else float("nan")
    ex.figure(fig, "dose_response.png", "Steering dose–response",
              "Adding +coef·v makes responses express the trait more, −coef·v less, roughly monotone in the "
              "coefficient until coherence degrades (paper Fig. 3).",
              check=ex.check("steering moves the trait score in the sign of the coefficient", ok,
                             f"coef {min(c):+g}: {lo:.1f}, 0: {base:.1f}, {max(c):+g}: {hi:.1f}"), headline=True)
    return ok


def _fig_monitor(ex, mon):
    from pyinterp.experiments.report import new_figure

    fig, ax = new_figure(size=(5.6, 4.0))
    sc = ax.scatter(mon["projection"].numpy(), mon["score"].numpy(), c=mon["level"].numpy(), cmap="coolwarm",
                    vmin=-1, vmax=1, s=22, edgecolor="k", lw=0.3)
    fig.colorbar(sc, ax=ax, label="system-prompt persona intensity (−1 … +1)")
    ax.set_xlabel("projection of the last prompt token onto v"); ax.set_ylabel("judged trait score of response")
    ax.set_title(f"r = {mon['r']:.2f}")
    ex.figure(fig, "monitoring.png", "Monitoring: last-prompt-token projection vs trait expression",
              "Under system prompts interpolating between the persona and its opposite, the projection before the "
              "response predicts how strongly the response expresses the trait (paper: r ≈ 0.75–0.83).",
              check=ex.check("projection correlates with trait expression (r > 0.5)", mon["r"] > 0.5,
                             f"r = {mon['r']:.3f} over {len(mon['score'])} prompts (per sample r = {mon['r_samples']:.3f})"))


def _fig_screen(ex, scr):
    from pyinterp.experiments.report import new_figure

    fr, means = scr["fractions"], scr["means"]
    fig, ax = new_figure(size=(5.2, 3.6))
    labels = [f"{f:.0%}" for f in fr]
    ax.bar(labels, means, color="#5a7d2a")
    for i, f in enumerate(fr):
        ps = scr["per_sample"][f"{f:g}"].numpy()
        ax.scatter([i] * len(ps), ps, s=5, color="k", alpha=0.35)
    ax.set_xlabel("trait-expressing responses in the finetuning set"); ax.set_ylabel("projection difference")
    order = all(a < b for a, b in zip(means, means[1:]))
    ex.figure(fig, "screening.png", "Screening finetuning sets by projection difference",
              "Data sets with more trait-expressing responses have a larger projection difference, ranking them "
              "before any finetuning (paper Fig. 6/7).",
              check=ex.check("projection difference ranks the contaminated sets in order", order,
                             ", ".join(f"{l}: {m:.3f}" for l, m in zip(labels, means))))
    return order


def _fig_finetune(ex, base, ft, prevent):
    from pyinterp.experiments.report import new_figure

    plain = ft[max(ft, key=float)]
    rows = [("base", base), ("plain finetune", plain["eval"]),
            (f"preventative (+{ex.config.prevent_alpha:g}·v)", prevent["eval"]),
            (f"plain + inference steer ({ex.config.inference_alpha:+g}·v)", plain["inference"])]
    fig, (a1, a2, a3) = new_figure(3, 1, size=(4.0, 3.6))
    names = [r[0] for r in rows]
    colors = ["#777777", "#b03030", "#1f4e99", "#d9822b"]
    a1.bar(range(4), [r[1]["trait_score"] for r in rows], color=colors)
    a1.set_ylabel("trait score, neutral prompt (no steering)"); a1.set_ylim(0, 100)
    a2.bar(range(4), [r[1]["general_loss"] for r in rows], color=colors)
    a2.set_ylabel("held-out loss, all personas (general ability)")
    for a in (a1, a2):
        a.set_xticks(range(4)); a.set_xticklabels(names, rotation=25, ha="right", fontsize=7)
    xs = [ft[k]["eval"]["projection"] - base["projection"] for k in sorted(ft, key=float)]
    ys = [ft[k]["eval"]["trait_score"] - base["trait_score"] for k in sorted(ft, key=float)]
    a3.scatter(xs, ys, color="#b03030", label="plain finetune (by contamination)")
    for k, x, y in zip(sorted(ft, key=float), xs, ys):
        a3.annotate(f"{float(k):.0%}", (x, y), fontsize=7)
    a3.scatter([prevent["eval"]["projection"] - base["projection"]],
               [prevent["eval"]["trait_score"] - base["trait_score"]], color="#1f4e99", label="preventative")
    a3.set_xlabel("finetuning shift (last-prompt projection − base)"); a3.set_ylabel("trait score − base")
    a3.legend(fontsize=7)
    shift_plain = plain["eval"]["trait_score"] - base["trait_score"]
    shift_prev = prevent["eval"]["trait_score"] - base["trait_score"]
    ok = shift_prev < shift_plain
    ex.figure(fig, "finetuning.png", "Preventative steering vs plain finetuning and inference-time steering",
              "Finetuning on trait-expressing data shifts the persona; adding +coef·v during finetuning (evaluated "
              "without it) keeps the trait shift smaller, with general ability near the base model, while "
              "inference-time steering against the trait costs more ability (paper Fig. 8).",
              check=ex.check("preventative steering limits the trait shift of finetuning", ok,
                             f"trait shift plain {shift_plain:+.1f}, preventative {shift_prev:+.1f}"))
    return xs, ys


def _esc(s) -> str:
    import html

    return html.escape(str(s))


def run(config: Config, out_dir, *, fresh: bool = False) -> dict:
    from pyinterp import persona

    cfg = config
    user_judge = check_config(cfg)
    hf = bool(cfg.model)
    what = (f"the Hugging Face model in <code>{_esc(cfg.model)}</code>" if hf else
            "the project's own small transformer trained on a synthetic chat corpus whose system prompts select "
            "personas (optimistic/pessimistic, evil/kind, neutral, and graded intensities)")
    ex = Experiment(NAME, TITLE, CITATION, cfg, out_dir, fresh=fresh, summary=(
        f"The persona-vector pipeline on {what}: extraction of a per-layer persona vector for the trait "
        f"<b>{cfg.trait}</b> with the paper's filtering, layer choice and a steering dose–response curve, "
        "monitoring by the last prompt token, screening of finetuning sets by projection difference, and "
        "preventative steering during finetuning."))
    trait = pc.demo_trait(cfg.trait, cfg.n_questions, cfg.n_eval_questions, cfg.seed)
    general_docs = pc.make_corpus(cfg.general_docs, cfg.seed + 12345, tuple(cfg.sentences))  # held out: another seed
    judge, judge_info = _judge(cfg, ex, user_judge)
    metrics: dict = {"model": cfg.model or "demo", "judge": cfg.judge or "built-in classifier judge",
                     "judge_report": {k: v for k, v in judge_info.items() if k != "examples"}}
    _judge_section(ex, judge_info)
    if hf:
        model = _hf_model(cfg, ex.device)
    else:
        corpus = ex.step("corpus", lambda: _corpus(cfg))
        trained = ex.step("train", lambda: _train(cfg, ex, corpus))
        model = _demo_model(cfg, corpus, trained["state"], ex.device)
        lens = corpus["lengths"].float()
        metrics["corpus"] = {"docs": cfg.n_docs, "mean_tokens": float(lens.mean()), "max_tokens": int(lens.max())}
        c = torch.tensor(trained["loss_curve"])
        metrics["final_train_loss"] = float(c[-5:, 1].mean())
        from pyinterp.experiments.report import new_figure

        fig, ax = new_figure(size=(5, 3.2))
        ax.plot(c[:, 0].numpy(), c[:, 1].numpy(), lw=1)
        ax.set_xlabel("step"); ax.set_ylabel("training loss (nats/token)"); ax.set_yscale("log")
        ex.figure(fig, "train.png", "Demo model training on the synthetic persona corpus",
                  "Loss falls as the model learns to answer in the persona its system prompt asks for.")
        rows = "".join(f"<tr><td>{_esc(d['system'])}</td><td>{_esc(d['question'])}</td><td>{_esc(d['response'])}</td></tr>"
                       for d in corpus["examples"])
        ex.section("Synthetic chat corpus (examples)",
                   f"<table><tr><th>system</th><th>user</th><th>assistant</th></tr>{rows}</table>")
    general = _general_samples(cfg, model, general_docs)

    ext = ex.step("extract", lambda: _extract(cfg, model, trait, judge))
    pv = _pv(ext, trait)
    metrics["extraction"] = ext["stats"]
    lay = ex.step("layers", lambda: _layers(cfg, model, pv, trait, judge))
    layer = int(lay["best_layer"])
    v = pv.vector(layer)
    metrics["layer"] = layer
    metrics["layer_scores"] = {"baseline": lay["baseline"], "steered": lay["scores"]}
    _fig_layers(ex, ext, lay)
    rows = "".join(f"<tr><td>{side}</td><td>{_esc(t)}</td></tr>" for side in ("positive", "negative")
                   for t in ext["examples"][side])
    st = ext["stats"]
    ex.section("Extraction (kept responses)",
               "<p>" + "; ".join(f"{k}: {st[k]['kept']}/{st[k]['generated']} kept "
                                 f"({st[k]['dropped_trait']} dropped for trait score, {st[k]['dropped_coherence']} "
                                 f"for coherence)" for k in ("positive", "negative")) + "</p>"
               f"<table><tr><th>side</th><th>response</th></tr>{rows}</table>")

    dose = ex.step("dose", lambda: _dose(cfg, model, v, layer, trait, judge))
    metrics["dose_response"] = {"coefs": dose["coefs"], "trait_score": dose["scores"], "coherence": dose["coherence"]}
    steer_ok = _fig_dose(ex, dose, layer)
    rows = "".join(f"<tr><td>{k}</td><td>{_esc(t)}</td></tr>" for k, t in dose["examples"].items())
    ex.section("Steered responses (neutral system prompt)",
               f"<table><tr><th>coef</th><th>response</th></tr>{rows}</table>")

    mon = ex.step("monitor", lambda: _monitor(cfg, model, pv, layer, trait, judge))
    metrics["monitoring_r"] = mon["r"]
    metrics["monitoring_r_per_sample"] = mon["r_samples"]
    _fig_monitor(ex, mon)

    scr = ex.step("screen", lambda: _screen(cfg, model, v, layer, trait))
    metrics["screening"] = {f"{f:g}": m for f, m in zip(scr["fractions"], scr["means"])}
    _fig_screen(ex, scr)

    r_shift = r_screen = float("nan")
    if cfg.ft_steps > 0:  # 0 skips finetuning (e.g. a model too large to finetune here)
        base = ex.step("base_eval", lambda: _measure(cfg, model, v, layer, trait, judge, general))
        ft = {f"{f:g}": ex.step(f"finetune_{f:g}", lambda f=f: _finetune(
            cfg, model, v, layer, trait, judge, general, f, 0.0,
            cfg.inference_alpha if f == max(cfg.contamination) else 0.0)) for f in cfg.contamination}
        prevent = ex.step("finetune_preventative", lambda: _finetune(
            cfg, model, v, layer, trait, judge, general, max(cfg.contamination), cfg.prevent_alpha))
        xs, ys = _fig_finetune(ex, base, ft, prevent)
        r_shift = persona.pearson(torch.tensor(xs), torch.tensor(ys)) if len(xs) > 2 else float("nan")
        r_screen = (persona.pearson(torch.tensor(scr["means"]), torch.tensor(ys))
                    if len(ys) > 2 and len(ys) == len(scr["means"]) else float("nan"))
        plain = ft[max(ft, key=float)]
        metrics["finetuning"] = {"base": base, "plain": plain["eval"], "preventative": prevent["eval"],
                                 "inference_steering": plain["inference"],
                                 "by_contamination": {k: ft[k]["eval"] for k in ft},
                                 "r_shift_vs_trait": r_shift, "r_projection_difference_vs_trait": r_screen}
        ex.check("finetuning shift correlates with trait change (r > 0.5)", r_shift > 0.5,
                 f"r = {r_shift:.3f} over {len(xs)} contamination levels")
        ex.check("preventative steering keeps general loss within 10% of plain finetuning",
                 prevent["eval"]["general_loss"] <= 1.1 * plain["eval"]["general_loss"],
                 f"base {base['general_loss']:.3f}, plain {plain['eval']['general_loss']:.3f}, "
                 f"preventative {prevent['eval']['general_loss']:.3f}, inference-steered "
                 f"{plain['inference']['general_loss']:.3f}")

    small = cfg.scale != "full" or not hf
    ex.compare("steering (+ induces, − suppresses)", "coef ≈ +2 induces, ≈ −1.5 suppresses (Qwen2.5-7B, layer 20)",
               f"{'yes' if steer_ok else 'no'}: " + ", ".join(f"{c:+g}→{s:.0f}" for c, s in zip(dose["coefs"], dose["scores"])),
               comparable=not small, note="coefficient scale depends on the model's residual norm" if small else "",
               key=True)
    ex.compare("monitoring correlation r", "0.75–0.83", f"{mon['r']:.2f}", comparable=not small,
               note="synthetic personas, small classifier judge" if small else "", key=True)
    ex.compare("finetuning shift vs trait change r", "0.76–0.97", fmt(r_shift), comparable=False,
               note=f"{len(cfg.contamination)} finetuned models (paper: many data sets)")
    ex.compare("projection difference ranks data sets", "predicts post-finetuning trait expression",
               ", ".join(f"{f:.0%}: {m:.3f}" for f, m in zip(scr["fractions"], scr["means"])) +
               (f" (r with trait change {r_screen:.2f})" if r_screen == r_screen else ""), comparable=not small)
    if cfg.ft_steps > 0:
        ex.compare("preventative steering", "smaller trait shift, MMLU near base",
                   f"trait {base['trait_score']:.0f} → plain {plain['eval']['trait_score']:.0f}, preventative "
                   f"{prevent['eval']['trait_score']:.0f}; held-out loss {base['general_loss']:.3f} → "
                   f"{plain['eval']['general_loss']:.3f} / {prevent['eval']['general_loss']:.3f}",
                   comparable=False, note="general ability = held-out loss on all personas, not MMLU")
    ex.setting("model", "Qwen2.5-7B-Instruct, Llama-3.1-8B-Instruct",
               cfg.model or f"own transformer: {cfg.n_layers} layers, d_model {cfg.d_model}, trained {cfg.steps} steps",
               "" if hf else "a model small enough to train here, on a corpus where personas are known")
    ex.setting("judge", "GPT-4.1-mini (trait and coherence)", cfg.judge or (
        f"independent classifier judge (held-out accuracy {judge_info['held_out_accuracy']:.0%}) "
        "+ coherence heuristic"), "offline, deterministic")
    ex.setting("samples", "5 prompt pairs × 20 questions × 10 samples",
               f"5 × {cfg.n_questions} × {cfg.n_samples}", "time budget" if cfg.scale != "full" else "")
    ex.setting("finetuning data", "trait-eliciting data sets (evil, sycophancy, hallucination; EM-like)",
               f"{cfg.screen_size} neutral-prompt questions, {', '.join(f'{f:.0%}' for f in cfg.contamination)} "
               f"trait responses; {cfg.ft_steps} steps lr {cfg.ft_lr:g}", "synthetic")
    ex.setting("general ability", "MMLU accuracy", "response loss on held-out documents of every persona", "demo scale")
    return ex.finish(metrics)
