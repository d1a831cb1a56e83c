"""Feature dashboards: one browsable HTML page per group of units (dictionary features or
MLP neurons), in the style of Towards Monosemanticity's feature browser.

For each unit: its density, the monosemanticity proxy, the top-activating contexts with each
token highlighted in proportion to the unit's activation on it, a histogram of its non-zero
activations (PNG) and its top positive / negative logit effects (the unit's output direction
through the unembedding, e.g. W_dec @ W_out @ W_U for an MLP dictionary feature).

    html = write_dashboards(out_dir / "dashboards", "features", rows, vocab, acts, ids, labels,
                            logit_dirs, W_U)
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from pyinterp.experiments import report
from pyinterp.experiments._io import write_text
from pyinterp.experiments.dictlearn import concentration, logit_effects


def vocab_strings(tok, d_vocab: int) -> List[str]:
    """Each token id's text (whitespace made visible enough to read in HTML)."""
    out = []
    for i in range(d_vocab):
        try:
            s = tok.decode([i])
        except Exception:  # noqa: BLE001 - ids the tokenizer does not know
            s = f"<{i}>"
        out.append(s)
    return out


def _context(rows: torch.Tensor, unit_acts: torch.Tensor, vocab: Sequence[str], pos: int, vmax: float,
             before: int = 14, after: int = 4) -> str:
    """HTML of the context around flat token position ``pos``. unit_acts: (N, T)."""
    T = rows.shape[1]
    r, t = divmod(int(pos), T)
    lo, hi = max(0, t - before), min(T, t + after + 1)
    toks = [vocab[int(i)] for i in rows[r, lo:hi]]
    return report.highlight_tokens(toks, unit_acts[r, lo:hi].tolist(), vmax, focus=t - lo)


def _hist(values: torch.Tensor, path: Path, title: str):
    fig, ax = report.new_figure(size=(3.2, 1.8))
    v = values[values > 0]
    if v.numel():
        ax.hist(v.numpy(), bins=30, color="#e07b00")
    ax.set_title(title, fontsize=7)
    ax.tick_params(labelsize=6)
    ax.set_xlabel("activation (non-zero)", fontsize=6)
    report.save(fig, path)


def _tok_list(ids, vals, vocab) -> str:
    return ", ".join(f"<code>{html.escape(repr(vocab[int(i)]))}</code> {float(v):+.2f}" for i, v in zip(ids, vals))


@torch.no_grad()
def write_dashboards(out_dir, group: str, rows: torch.Tensor, vocab: Sequence[str], acts: torch.Tensor,
                     units: Sequence[int], labels: Sequence[str], logit_dirs: Optional[torch.Tensor],
                     W_U: Optional[torch.Tensor], *, n_contexts: int = 10, title: str = "") -> dict:
    """Write ``out_dir/<group>.html`` (+ one histogram PNG per unit) and return a summary.

    rows: (N, T) tokens; acts: (N*T, U_all) activations of all units on those tokens;
    units: which columns to show; logit_dirs: (len(units), d_model) output directions.
    Returns {"page": relative path, "concentration": [...], "density": [...]}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    N, T = rows.shape
    flat_tokens = rows.reshape(-1)
    sub = acts[:, list(units)]  # (N*T, U)
    conc, tv, tp = concentration(sub, flat_tokens, n_contexts)
    dens = (sub > 0).float().mean(0)
    effects = logit_effects(logit_dirs, W_U, 8) if logit_dirs is not None and W_U is not None else None
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title or group)}</title>"
             f"<style>{report.CSS}</style></head><body><h1>{html.escape(title or group)}</h1>",
             "<p class='small'>Each card: top-activating contexts (token background ∝ activation, the "
             "maximum-activation token outlined), the histogram of non-zero activations, and the top "
             "logit effects of the unit's output direction. <i>Token concentration</i> is the share of the "
             f"top {n_contexts} contexts whose current token is the unit's most common one.</p><p>"
             + " · ".join(f"<a href='#u{u}'>{html.escape(l)}</a>" for u, l in zip(units, labels)) + "</p>"]
    for j, (u, label) in enumerate(zip(units, labels)):
        png = f"{group}_{u}.png"
        _hist(sub[:, j].cpu(), out_dir / png, f"{label}: non-zero activations")
        ua = sub[:, j].reshape(N, T)
        vmax = float(tv[j, 0]) if tv.shape[1] else 1.0
        ctx = "".join(_context(rows, ua, vocab, int(p), vmax) for p, v in zip(tp[j], tv[j]) if float(v) > 0)
        parts.append(f"<h2 id='u{u}'>{html.escape(label)}</h2>"
                     f"<p class='small'>density {float(dens[j]):.3g} · max activation {vmax:.3g} · token "
                     f"concentration {float(conc[j]):.2f}</p>")
        parts.append(f"<div style='display:flex;gap:1em;align-items:flex-start'><div style='flex:2'>"
                     f"{ctx or '<i>never fires on these tokens</i>'}</div><div style='flex:1'>"
                     f"<img src='{png}' style='max-width:100%'>")
        if effects is not None:
            pi, pv, ni, nv = (e[j] for e in effects)
            parts.append(f"<p class='small'><b>raises</b> {_tok_list(pi, pv, vocab)}<br>"
                         f"<b>lowers</b> {_tok_list(ni, nv, vocab)}</p>")
        parts.append("</div></div>")
    parts.append("</body></html>\n")
    write_text(out_dir / f"{group}.html", "\n".join(parts))
    return {"page": f"{out_dir.name}/{group}.html", "concentration": conc.tolist(), "density": dens.tolist()}
