"""Feature dashboards as a library call: top activating contexts, activation density and
histogram, and logit effects of dictionary features (or any units), as one HTML page and as
JSON in the batch layout SAEDashboard writes and Neuronpedia imports.

    d = pyinterp.sae.dashboards(sae, model, tokens)          # pyinterp or SAELens SAE
    d.write("out/dashboards")            # dashboards.html + neuronpedia.json
    d.features[0].contexts               # [(value, row, position), ...], largest first

``model``: anything with ``run_with_cache`` and TransformerLens hook names (pyinterp models,
``from_hf``/``from_transformer_lens`` adapters, a TransformerLens ``HookedTransformer``) or a
Hugging Face causal LM (wrapped with :func:`pyinterp.models.from_hf`). The forward stops after
the SAE's hook. Activations are streamed batch by batch; only the selected features' running
top contexts, counts and non-zero values are kept. The JSON follows SAEDashboard's
``NeuronpediaDashboardBatch`` (docs/decisions/sae-dashboards.md).
"""
from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch


@dataclass
class FeatureDashboard:
    """One feature's (or unit's) dashboard data."""

    index: int
    label: str
    n_tokens: int  # tokens the statistics were computed on
    frac_nonzero: float
    max_value: float
    contexts: List[Tuple[float, int, int]]  # (value, row, position), largest first
    context_values: List[List[float]]  # each context row's activations at every position
    hist_edges: List[float]  # non-zero activations histogram: bins+1 edges
    hist_heights: List[int]
    logits_pos: List[Tuple[int, float]] = field(default_factory=list)  # (token id, effect)
    logits_neg: List[Tuple[int, float]] = field(default_factory=list)
    logits_hist_edges: List[float] = field(default_factory=list)
    logits_hist_heights: List[int] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def vocab_strings(tok, d_vocab: int) -> List[str]:
    """Each token id's text from a tokenizer with ``decode([id])`` ("<id>" for unknown ids)."""
    out = []
    for i in range(d_vocab):
        try:
            s = tok.decode([i])
        except Exception:  # noqa: BLE001 - ids the tokenizer does not know
            s = f"<{i}>"
        out.append(s)
    return out


def fold_ln_final(model, directions: torch.Tensor) -> torch.Tensor:
    """Residual-stream directions as the unembedding sees them through the final norm: centred
    for a LayerNorm, times its gain (the per-token scale is left out). directions (U, d_model)."""
    d = directions.float()
    ln = getattr(model, "ln_final", None)
    gain = getattr(ln, "w", None)
    if gain is None:
        gain = getattr(ln, "weight", None)
    if gain is None and hasattr(model, "_norm"):  # pyinterp's HF adapter: the HF final norm
        gain = getattr(model._norm, "weight", None)
    cfg = getattr(model, "cfg", None)
    norm = str(getattr(cfg, "normalization", getattr(cfg, "normalization_type", "ln")) or "").lower()
    if not norm.startswith("rms"):
        d = d - d.mean(-1, keepdim=True)
    if gain is not None:
        d = d * gain.detach().float().to(d.device)
    return d


def logit_effects(directions: torch.Tensor, W_U: torch.Tensor, k: int = 10):
    """Top positive / negative logit effects of output-space directions.

    directions: (U, d_model); W_U: (d_model, d_vocab) -> (pos ids (U, k), pos vals, neg ids,
    neg vals)."""
    eff = directions.float() @ W_U.float()
    k = min(k, eff.shape[1])
    pv, pi = eff.topk(k, dim=1)
    nv, ni = (-eff).topk(k, dim=1)
    return pi, pv, ni, -nv


def _histogram(values: torch.Tensor, bins: int) -> Tuple[List[float], List[int]]:
    if values.numel() == 0:
        return [], []
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        hi = lo + 1e-6
    heights = torch.histc(values.float(), bins=bins, min=lo, max=hi)
    edges = torch.linspace(lo, hi, bins + 1)
    return [float(e) for e in edges], [int(h) for h in heights]


class _Top:
    """Running top-k (value, flat position, the row's activations) of F units."""

    def __init__(self, n_units: int, k: int, T: int):
        self.k, self.T = k, T
        self.values = torch.full((n_units, 0), float("-inf"))
        self.pos = torch.zeros((n_units, 0), dtype=torch.int64)
        self.rows = torch.zeros((n_units, 0, T))

    def update(self, acts: torch.Tensor, offset: int) -> None:
        """acts: (B*T, F) activations of one batch whose first position is ``offset``."""
        B = acts.shape[0] // self.T
        k = min(self.k, acts.shape[0])
        v, p = acts.float().topk(k, dim=0)  # (k, F)
        per_row = acts.float().reshape(B, self.T, -1)  # (B, T, F)
        rows = per_row[p // self.T, :, torch.arange(acts.shape[1])[None, :]]  # (k, F, T)
        vals = torch.cat([self.values, v.T], 1)
        pos = torch.cat([self.pos, (p + offset).T], 1)
        rws = torch.cat([self.rows, rows.permute(1, 0, 2)], 1)
        keep = vals.topk(min(self.k, vals.shape[1]), dim=1).indices
        self.values = vals.gather(1, keep)
        self.pos = pos.gather(1, keep)
        self.rows = rws.gather(1, keep[..., None].expand(-1, -1, self.T))


@dataclass
class Dashboards:
    """Dashboards of several features over one token set (see the module docstring)."""

    features: List[FeatureDashboard]
    tokens: torch.Tensor  # (N, T) the rows contexts point into
    vocab: List[str]
    title: str = "Feature dashboards"
    hook_name: Optional[str] = None

    # ------------------------------------------------------------------ Neuronpedia JSON
    def to_neuronpedia(self, model_id: str = "", layer: int = 0, sae_set: str = "",
                       dataset: str = "") -> dict:
        """SAEDashboard's NeuronpediaDashboardBatch: {model_id, layer, sae_set, features,
        settings}; each feature with its top activations as one "TOP ACTIVATIONS" group
        (bin_min -1, bin_max = the max activation, bin_contains -1), values rounded to 3 places."""
        def r(xs):
            return [round(float(x), 3) for x in xs]

        T = self.tokens.shape[1]
        feats = []
        for f in self.features:
            centres = [(a + b) / 2 for a, b in zip(f.hist_edges[:-1], f.hist_edges[1:])]
            lcentres = [(a + b) / 2 for a, b in zip(f.logits_hist_edges[:-1], f.logits_hist_edges[1:])]
            acts = [{"bin_min": -1, "bin_max": round(f.max_value, 3), "bin_contains": -1,
                     "tokens": [self.vocab[int(t)] for t in self.tokens[row].tolist()],
                     "values": r(vals)}
                    for (v, row, pos), vals in zip(f.contexts, f.context_values)]
            feats.append({
                "feature_index": int(f.index),
                "neuron_alignment_indices": [], "neuron_alignment_values": [], "neuron_alignment_l1": [],
                "correlated_neurons_indices": [], "correlated_neurons_l1": [],
                "correlated_neurons_pearson": [],
                "correlated_features_indices": [], "correlated_features_l1": [],
                "correlated_features_pearson": [],
                "neg_str": [self.vocab[i] for i, _ in f.logits_neg],
                "neg_values": r(v for _, v in f.logits_neg),
                "pos_str": [self.vocab[i] for i, _ in f.logits_pos],
                "pos_values": r(v for _, v in f.logits_pos),
                "frac_nonzero": float(f.frac_nonzero),
                "freq_hist_data_bar_values": r(centres), "freq_hist_data_bar_heights": list(f.hist_heights),
                "logits_hist_data_bar_heights": list(f.logits_hist_heights),
                "logits_hist_data_bar_values": r(lcentres),
                "num_tokens_for_dashboard": int(f.n_tokens),
                "activations": acts,
                "n_prompts_total": int(self.tokens.shape[0]), "n_tokens_in_prompt": int(T),
                "dataset": dataset,
            })
        return {"model_id": model_id, "layer": int(layer), "sae_set": sae_set, "features": feats,
                "settings": {"n_batches_to_sample_from": int(self.tokens.shape[0]),
                             "n_prompt_to_select": int(self.tokens.shape[0])}}

    # ------------------------------------------------------------------ HTML
    def to_html(self, before: int = 14, after: int = 4) -> str:
        """A self-contained page: per feature a card with its top contexts (token background
        in proportion to the activation, the maximum outlined), an SVG histogram of its non-zero
        activations and its top logit effects."""
        esc = html.escape
        parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(self.title)}</title>"
                 f"<style>{_CSS}</style></head><body><h1>{esc(self.title)}</h1>",
                 "<p class='small'>"
                 + (f"hook <code>{esc(self.hook_name)}</code> · " if self.hook_name else "")
                 + f"{self.tokens.shape[0]} rows of {self.tokens.shape[1]} tokens · "
                 + " · ".join(f"<a href='#u{f.index}'>{esc(f.label)}</a>" for f in self.features) + "</p>"]
        for f in self.features:
            ctx = "".join(self._context_html(row, pos, vals, f.max_value, before, after)
                          for (v, row, pos), vals in zip(f.contexts, f.context_values) if v > 0)
            extra = "".join(f" · {esc(str(k))} " + (f"{v:.3g}" if isinstance(v, float) else esc(str(v)))
                            for k, v in f.extra.items())
            parts.append(f"<h2 id='u{f.index}'>{esc(f.label)}</h2><p class='small'>density "
                         f"{f.frac_nonzero:.3g} · max activation {f.max_value:.3g}{extra}</p>"
                         "<div class='card'><div class='ctxs'>"
                         f"{ctx or '<i>never fires on these tokens</i>'}</div><div class='side'>"
                         f"{_svg_hist(f.hist_edges, f.hist_heights)}")
            if f.logits_pos:
                parts.append("<p class='small'><b>raises</b> " + self._tok_list(f.logits_pos)
                             + "<br><b>lowers</b> " + self._tok_list(f.logits_neg) + "</p>")
            parts.append("</div></div>")
        parts.append("</body></html>\n")
        return "\n".join(parts)

    def _context_html(self, row: int, pos: int, vals, vmax: float, before: int, after: int) -> str:
        T = self.tokens.shape[1]
        lo, hi = max(0, pos - before), min(T, pos + after + 1)
        vmax = vmax if vmax > 0 else 1.0
        out = []
        for t in range(lo, hi):
            a = float(vals[t])
            style = f"background:rgba(255,140,0,{max(0.0, min(1.0, a / vmax)):.2f})"
            if t == pos:
                style += ";outline:1px solid #c00"
            tok = html.escape(self.vocab[int(self.tokens[row, t])])
            out.append(f"<span style='{style}' title='{a:.3g}'>{tok}</span>")
        return "<div class='ctx'>" + "".join(out) + "</div>"

    def _tok_list(self, pairs) -> str:
        return ", ".join(f"<code>{html.escape(repr(self.vocab[i]))}</code> {v:+.2f}" for i, v in pairs)

    def write(self, out_dir, name: str = "dashboards", **neuronpedia) -> dict:
        """Write ``<name>.html`` and ``<name>.json`` (Neuronpedia layout; ``neuronpedia`` kwargs:
        model_id, layer, sae_set, dataset) under ``out_dir``; returns their paths."""
        from pyinterp._files import atomic_write_text

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        page = atomic_write_text(out / f"{name}.html", self.to_html())
        data = atomic_write_text(out / f"{name}.json", json.dumps(self.to_neuronpedia(**neuronpedia)))
        return {"html": page, "json": data}


_CSS = ("body{font-family:sans-serif;max-width:1100px;margin:1em auto;color:#222}"
        ".small{font-size:0.85em;color:#555}.card{display:flex;gap:1em;align-items:flex-start}"
        ".ctxs{flex:2}.side{flex:1}.ctx{font-family:monospace;white-space:pre-wrap;margin:2px 0;"
        "font-size:0.85em}h2{font-size:1.05em;margin-top:1.5em}")


def _svg_hist(edges: Sequence[float], heights: Sequence[int], w: int = 240, h: int = 80) -> str:
    if not heights:
        return "<p class='small'><i>no non-zero activations</i></p>"
    top = max(heights) or 1
    bw = w / len(heights)
    bars = "".join(f"<rect x='{i * bw:.1f}' y='{h - hh / top * h:.1f}' width='{max(bw - 1, 1):.1f}' "
                   f"height='{hh / top * h:.1f}' fill='#e07b00'/>" for i, hh in enumerate(heights))
    return (f"<svg width='{w}' height='{h + 14}' role='img' aria-label='activation histogram'>{bars}"
            f"<text x='0' y='{h + 12}' font-size='9'>{edges[0]:.2g}</text>"
            f"<text x='{w}' y='{h + 12}' font-size='9' text-anchor='end'>{edges[-1]:.2g}</text></svg>")


# ---------------------------------------------------------------------- building the data
def from_activations(tokens: torch.Tensor, acts: torch.Tensor, units: Sequence[int], *,
                     labels: Optional[Sequence[str]] = None, vocab: Optional[List[str]] = None,
                     logit_dirs: Optional[torch.Tensor] = None, W_U: Optional[torch.Tensor] = None,
                     n_contexts: int = 10, n_logits: int = 10, bins: int = 30,
                     title: str = "Feature dashboards") -> Dashboards:
    """Dashboards from activations already in memory: tokens (N, T); acts (N*T, U_all);
    ``units`` the columns to show; ``logit_dirs`` (len(units), d_model) output directions as the
    unembedding W_U (d_model, d_vocab) sees them."""
    N, T = tokens.shape
    sub = acts[:, list(units)].float()
    top = _Top(len(units), n_contexts, T)
    top.update(sub, 0)
    nz = [sub[:, j][sub[:, j] != 0] for j in range(len(units))]
    return _assemble(tokens, vocab, units, labels, top, nz, (sub != 0).sum(0), N * T,
                     logit_dirs, W_U, n_logits, bins, title, None)


def _assemble(tokens, vocab, units, labels, top, nonzero, counts, n_tokens, logit_dirs, W_U,
              n_logits, bins, title, hook_name) -> Dashboards:
    d_vocab = W_U.shape[1] if W_U is not None else int(tokens.max()) + 1
    vocab = vocab if vocab is not None else [f"<{i}>" for i in range(max(d_vocab, int(tokens.max()) + 1))]
    effects = None
    if logit_dirs is not None and W_U is not None:
        effects = logit_effects(logit_dirs, W_U, n_logits) + (logit_dirs.float() @ W_U.float(),)
    feats = []
    T = tokens.shape[1]
    for j, u in enumerate(units):
        vals, pos = top.values[j], top.pos[j]
        ok = torch.isfinite(vals)
        contexts = [(float(v), int(p) // T, int(p) % T) for v, p in zip(vals[ok], pos[ok])]
        edges, heights = _histogram(nonzero[j], bins)
        fd = FeatureDashboard(
            index=int(u), label=labels[j] if labels is not None else f"feature {int(u)}",
            n_tokens=int(n_tokens), frac_nonzero=float(counts[j]) / max(1, n_tokens),
            max_value=max([c[0] for c in contexts] + [0.0]), contexts=contexts,
            context_values=[r.tolist() for r in top.rows[j][ok]], hist_edges=edges, hist_heights=heights)
        if effects is not None:
            pi, pv, ni, nv, eff = effects
            fd.logits_pos = [(int(i), float(v)) for i, v in zip(pi[j], pv[j])]
            fd.logits_neg = [(int(i), float(v)) for i, v in zip(ni[j], nv[j])]
            fd.logits_hist_edges, fd.logits_hist_heights = _histogram(eff[j], bins)
        feats.append(fd)
    return Dashboards(feats, tokens.cpu(), list(vocab), title, hook_name)


def _decoder_rows(sae, features) -> torch.Tensor:
    """The features' decoder directions in the model's units (pyinterp: / input_scale)."""
    W = sae.W_dec.detach()[list(features)].float()
    scale = getattr(sae, "input_scale", None)
    return W / float(scale) if scale is not None else W


@torch.no_grad()
def dashboards(sae, model, tokens: torch.Tensor, features: Optional[Sequence[int]] = None, *,
               hook_name: Optional[str] = None, n_contexts: int = 10, n_logits: int = 10,
               bins: int = 30, batch_size: int = 16, max_features: int = 32, tokenizer=None,
               vocab: Optional[List[str]] = None, title: Optional[str] = None) -> Dashboards:
    """Dashboards of ``features`` (default: up to ``max_features`` of the most often firing) of
    ``sae`` (a pyinterp dictionary or an SAELens SAE) on ``tokens`` (N, T) run through
    ``model``. Logit effects are the decoder directions through the final norm and W_U when
    the SAE reads the residual stream (d_in == d_model). Token strings come from ``vocab``,
    ``tokenizer`` or ``model.tokenizer``."""
    from pyinterp.sae.any_sae import encode_at, hook_name_of
    from pyinterp.sae.store import activation_fn

    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
        got = getattr(tokens, "shape", tokens)
        raise ValueError(f"tokens must be a (N, T) tensor of token ids, got {got!r}")
    if not hasattr(model, "run_with_cache"):
        from pyinterp.models.hf import from_hf

        model = from_hf(model)
    name = hook_name_of(sae, hook_name)
    read = activation_fn(model, [name])  # stops after the hooked block
    d_sae = int(sae.cfg.d_sae)
    N, T = tokens.shape
    dev = next(iter(sae.parameters())).device

    def codes(batch):
        x = read(batch.to(next(model.parameters()).device))[name].to(dev)
        return encode_at(sae, x)

    if features is None:  # one pass to find the most often firing features
        counts = torch.zeros(d_sae, dtype=torch.int64)
        for s in range(0, N, batch_size):
            v, i = codes(tokens[s:s + batch_size])
            counts.index_add_(0, i.reshape(-1).cpu(), (v.reshape(-1) != 0).long().cpu())
        alive = counts.nonzero().flatten()
        features = alive[counts[alive].argsort(descending=True)[:max_features]].sort().values.tolist()
    features = [int(f) for f in features]
    if any(not 0 <= f < d_sae for f in features):
        raise ValueError(f"features must lie in [0, d_sae={d_sae}), got {features}")
    col = torch.full((d_sae,), -1, dtype=torch.int64)
    col[torch.tensor(features, dtype=torch.int64)] = torch.arange(len(features))
    top = _Top(len(features), n_contexts, T)
    nonzero: List[list] = [[] for _ in features]
    counts_f = torch.zeros(len(features), dtype=torch.int64)
    for s in range(0, N, batch_size):
        v, i = codes(tokens[s:s + batch_size])
        v, i = v.reshape(-1, v.shape[-1]).float().cpu(), i.reshape(-1, i.shape[-1]).cpu()
        c = col[i]
        hit = (c >= 0) & (v != 0)
        acts = torch.zeros(v.shape[0], len(features))
        rows = torch.arange(v.shape[0])[:, None].expand_as(c)
        acts.index_put_((rows[hit], c[hit]), v[hit], accumulate=True)
        top.update(acts, s * T)
        counts_f += (acts != 0).sum(0)
        for j in range(len(features)):
            a = acts[:, j]
            nonzero[j].append(a[a != 0])
    nz = [torch.cat(x) if x else torch.zeros(0) for x in nonzero]
    W_U = getattr(model, "W_U", None)
    dirs = None
    if W_U is not None and int(sae.cfg.d_in) == W_U.shape[0]:
        dirs = fold_ln_final(model, _decoder_rows(sae, features).to(W_U.device)).cpu()
        W_U = W_U.detach().float().cpu()
    else:
        W_U = None
    if vocab is None:
        tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        d_vocab = W_U.shape[1] if W_U is not None else int(tokens.max()) + 1
        vocab = vocab_strings(tok, d_vocab) if tok is not None else None
    return _assemble(tokens, vocab, features, None, top, nz, counts_f, N * T, dirs, W_U, n_logits,
                     bins, title or f"Feature dashboards: {name}", name)
