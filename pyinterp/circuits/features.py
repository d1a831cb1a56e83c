"""What the graph view shows about a feature: its top activating contexts and logit effects.

    cards = feature_cards(model, clt, rows, [(layer, index), ...], decode=tok.decode_one)
    write_html(graph, "g.html", features=graph_cards(graph, cards))
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import torch

from pyinterp.circuits._weights import model_weights
from pyinterp.circuits.dictionary import as_dictionary, check_dictionary, targets_of

Key = Tuple[int, int]  # (layer, feature index)


def _site(dictionary, layer: int) -> str:
    return f"blocks.{layer}.ln2.hook_normalized" if dictionary.input_site == "mlp_in" \
        else f"blocks.{layer}.hook_resid_mid"


@torch.no_grad()
def top_activations(model, dictionary, rows: torch.Tensor, features: Sequence[Key], k: int = 5,
                    batch: int = 32) -> Dict[Key, List[Tuple[float, int, int]]]:
    """The ``k`` largest activations of each feature over ``rows`` (N, T):
    {(layer, index): [(value, row, position), ...]} (largest first; fewer if it fires less)."""
    feats = sorted(set((int(l), int(i)) for l, i in features))
    by_layer: Dict[int, List[int]] = {}
    for l, i in feats:
        by_layer.setdefault(l, []).append(i)
    best: Dict[Key, Tuple[torch.Tensor, torch.Tensor]] = {}
    dev = model.W_U.device
    for s in range(0, rows.shape[0], batch):
        r = rows[s:s + batch].to(dev)
        _, cache = model.run_with_cache(r, names_filter=[_site(dictionary, l) for l in by_layer])
        B, T = r.shape
        for l, idx in by_layer.items():
            x = cache[_site(dictionary, l)].reshape(B * T, -1)
            v, i = dictionary.encode(l, x.to(dictionary.encoder_weight(l).dtype))
            want = torch.tensor(idx, device=i.device)
            hit = i[..., None] == want                                  # (N, k, F)
            acts = (v[..., None] * hit).sum(1).float()                  # (N, F)
            flat = torch.arange(B * T, device=acts.device) + s * T
            for j, f in enumerate(idx):
                vals, where = acts[:, j], flat
                if (l, f) in best:
                    vals = torch.cat([best[(l, f)][0], vals])
                    where = torch.cat([best[(l, f)][1], where])
                top = vals.topk(min(k, vals.numel()))
                best[(l, f)] = (top.values, where[top.indices])
    out = {}
    for key, (vals, where) in best.items():
        T = rows.shape[1]
        out[key] = [(float(v), int(w) // T, int(w) % T) for v, w in zip(vals, where) if float(v) > 0]
    return out


def logit_effects(model, dictionary, features: Sequence[Key], k: int = 6) -> Dict[Key, tuple]:
    """Each feature's direct effect on the logits, ignoring attention: its decoder rows summed
    over the layers it writes to, through the final norm's centring and gain, times W_U.
    {(layer, index): (top token ids, values, bottom token ids, values)}."""
    W = model_weights(model)
    out = {}
    for l, i in features:
        d = sum(dictionary.decoder_weight(l, t)[i].float() for t in targets_of(dictionary, l))
        if W.ln_final.kind == "ln":
            d = d - d.mean()
        if W.ln_final.w is not None:
            d = d * W.ln_final.w
        eff = d @ W.W_U
        up, down = eff.topk(k), (-eff).topk(k)
        out[(l, i)] = (up.indices.tolist(), up.values.tolist(), down.indices.tolist(), (-down.values).tolist())
    return out


def feature_cards(model, dictionary, rows: torch.Tensor, features: Sequence[Key], *,
                  decode: Callable[[int], str] = str, n_contexts: int = 5, window: int = 12,
                  n_logits: int = 6) -> Dict[Key, dict]:
    """Hover cards for the HTML view: {(layer, index): {"label", "contexts", "logits_up",
    "logits_down"}}; a context is the ``window`` tokens up to the activation, ``at`` its place."""
    dictionary = as_dictionary(dictionary)
    check_dictionary(dictionary, dictionary.n_layers, dictionary.d_model)
    tops = top_activations(model, dictionary, rows, features, n_contexts)
    effects = logit_effects(model, dictionary, features, n_logits)
    cards = {}
    for key in features:
        key = (int(key[0]), int(key[1]))
        ctx = []
        for v, r, p in tops.get(key, []):
            lo = max(0, p - window + 1)
            ctx.append({"tokens": [decode(int(t)) for t in rows[r, lo:p + 2].tolist()], "at": p - lo,
                        "value": v})
        ui, uv, di, dv = effects[key]
        cards[key] = {"label": f"layer {key[0]} feature {key[1]}", "contexts": ctx,
                      "logits_up": [[decode(t), v] for t, v in zip(ui, uv)],
                      "logits_down": [[decode(t), v] for t, v in zip(di, dv)]}
    return cards


def graph_cards(graph, cards: Dict[Key, dict]) -> Dict[str, dict]:
    """The cards keyed by the graph JSON's node ids (for :func:`pyinterp.circuits.write_html`)."""
    out = {}
    for n in graph.kept_nodes().tolist():
        if graph.kind(n) == "feature":
            key = (int(graph.feat_layer[n]), int(graph.feat_index[n]))
            if key in cards:
                out[graph.node_id(n)] = cards[key]
    return out
