"""Attention-pattern views a person can open: a self-contained HTML page and circuitsvis JSON.

    view = pattern_view(model, tokens[0], heads=[(1, 3), (1, 5)], str_tokens=strs)
    save_html(view, "patterns.html")          # open in a browser; hover a cell for its value
    save_circuitsvis_json(view, "patterns.json")
    # circuitsvis: cv.attention.attention_patterns(**json.load(open("patterns.json")))

Only the chosen heads' patterns are materialised (pyinterp.ops.attention_pattern).
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch

from pyinterp import ops
from pyinterp.attention._qk import for_each_layer, n_layers_heads


def pattern_view(model, tokens: torch.Tensor, heads: Sequence[Tuple[int, int]],
                 str_tokens: Optional[List[str]] = None, *, backend: Optional[str] = None) -> dict:
    """Patterns of ``heads`` ((layer, head) pairs) on one sequence tokens: (T,) or (1, T).

    Returns {"tokens": [str] * T, "attention": [[[float] * T] * T] per head,
    "attention_head_names": ["L{l}H{h}", ...]} (circuitsvis ``attention_patterns`` arguments).
    """
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or tokens.shape[0] != 1:
        raise ValueError(f"tokens must be one sequence, (T,) or (1, T), got {tuple(tokens.shape)}")
    L, H = n_layers_heads(model)
    heads = [(int(l), int(h)) for l, h in heads]
    for l, h in heads:
        if not (0 <= l < L and 0 <= h < H):
            raise ValueError(f"heads: ({l}, {h}) is out of range for {L} layers x {H} heads")
    T = tokens.shape[1]
    if str_tokens is None:
        str_tokens = [str(int(t)) for t in tokens[0]]
    if len(str_tokens) != T:
        raise ValueError(f"str_tokens must have {T} entries, got {len(str_tokens)}")
    wanted = {}
    for l, h in heads:
        wanted.setdefault(l, []).append(h)
    got = {}

    def on_layer(layer, q, k, scale):
        if layer in wanted:
            p = ops.attention_pattern(q, k, heads=wanted[layer], scale=scale, backend=backend)
            for i, h in enumerate(wanted[layer]):
                got[(layer, h)] = p[0, i].float().cpu()

    for_each_layer(model, tokens, on_layer)
    return {
        "tokens": list(str_tokens),
        "attention": [got[lh].tolist() for lh in heads],
        "attention_head_names": [f"L{l}H{h}" for l, h in heads],
    }


def _write(path, text: str) -> Path:
    from pyinterp._files import atomic_write_text

    return atomic_write_text(path, text)


def save_circuitsvis_json(view: dict, path) -> Path:
    """Write the view as JSON (the keyword arguments of circuitsvis attention_patterns)."""
    return _write(path, json.dumps(view))


_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
.head {{ display: inline-block; vertical-align: top; margin: 0 2em 2em 0; }}
canvas {{ image-rendering: pixelated; border: 1px solid #ccc; cursor: crosshair; }}
#info {{ font-family: monospace; min-height: 1.4em; }}
</style></head><body>
<h1>{title}</h1>
<p>Rows are queries (destination), columns keys (source); darker = more attention.
Hover a cell for its value.</p>
<div id="info"></div>
<div id="heads"></div>
<script>
const view = {data};
const info = document.getElementById("info");
const T = view.tokens.length;
const cell = Math.max(2, Math.min(14, Math.floor(480 / Math.max(T, 1))));
view.attention.forEach((pat, n) => {{
  const div = document.createElement("div");
  div.className = "head";
  const h = document.createElement("h3");
  h.textContent = view.attention_head_names[n];
  div.appendChild(h);
  const c = document.createElement("canvas");
  c.width = T * cell; c.height = T * cell;
  const ctx = c.getContext("2d");
  for (let i = 0; i < T; i++) for (let j = 0; j < T; j++) {{
    const v = pat[i][j];
    ctx.fillStyle = `rgba(30, 60, 200, ${{Math.min(1, Math.max(0, v))}})`;
    ctx.fillRect(j * cell, i * cell, cell, cell);
  }}
  c.addEventListener("mousemove", (e) => {{
    const r = c.getBoundingClientRect();
    const j = Math.floor((e.clientX - r.left) / cell), i = Math.floor((e.clientY - r.top) / cell);
    if (i >= 0 && i < T && j >= 0 && j < T)
      info.textContent = `${{view.attention_head_names[n]}}  query ${{i}} ${{JSON.stringify(view.tokens[i])}}` +
        ` -> key ${{j}} ${{JSON.stringify(view.tokens[j])}}: ${{pat[i][j].toFixed(4)}}`;
  }});
  div.appendChild(c);
  document.getElementById("heads").appendChild(div);
}});
</script></body></html>
"""


def save_html(view: dict, path, title: str = "Attention patterns") -> Path:
    """Write a self-contained HTML page (no external scripts) showing every head's pattern."""
    data = json.dumps(view).replace("</", "<\\/")
    return _write(path, _PAGE.format(title=html.escape(title), data=data))
