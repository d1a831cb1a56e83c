"""Feature dashboards of the paper reproductions: one browsable HTML page (+ Neuronpedia-layout
JSON) per group of units (dictionary features or MLP neurons), in the style of Towards
Monosemanticity's feature browser. The pages are built by the library call
:mod:`pyinterp.sae.feature_dashboards`; this module adds the experiments' monosemanticity proxy
(token concentration) to each card.

    summary = write_dashboards(out_dir / "dashboards", "features", rows, vocab, acts, ids, labels,
                               logit_dirs, W_U)
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch

from pyinterp.experiments.dictlearn import concentration
from pyinterp.sae.feature_dashboards import from_activations, vocab_strings  # noqa: F401


@torch.no_grad()
def write_dashboards(out_dir, group: str, rows: torch.Tensor, vocab: Sequence[str], acts: torch.Tensor,
                     units: Sequence[int], labels: Sequence[str], logit_dirs: Optional[torch.Tensor],
                     W_U: Optional[torch.Tensor], *, n_contexts: int = 10, title: str = "") -> dict:
    """Write ``out_dir/<group>.html`` and ``<group>.json`` and return a summary.

    rows: (N, T) tokens; acts: (N*T, U_all) activations of all units on those tokens;
    units: which columns to show; logit_dirs: (len(units), d_model) output directions.
    Returns {"page": relative path, "concentration": [...], "density": [...]}."""
    out_dir = Path(out_dir)
    sub = acts[:, list(units)]
    conc, _, _ = concentration(sub, rows.reshape(-1), n_contexts)
    d = from_activations(rows, acts, units, labels=labels, vocab=list(vocab), logit_dirs=logit_dirs,
                         W_U=W_U, n_contexts=n_contexts, n_logits=8, title=title or group)
    for f, c in zip(d.features, conc.tolist()):
        f.extra["token concentration"] = float(c)
    d.write(out_dir, group)
    return {"page": f"{out_dir.name}/{group}.html", "concentration": conc.tolist(),
            "density": [f.frac_nonzero for f in d.features]}
