"""Interventions on dictionary features in the real model, to test what a graph predicts.

    logits = intervene(model, clt, tokens, [(layer, pos, feature, new_value), ...])
    logits = ablate(model, clt, tokens, [(layer, pos, feature), ...])          # value 0
    rows = compare_ablations(graph, model, clt, [[node], [node_a, node_b], ...])

Setting feature i of layer s at position p from its value a to a' adds (a' - a) times its
decoder rows W_dec^{s->t}[i] to the MLP outputs of the layers t it writes to, at position p; the
rest of the model runs as usual (its MLPs, norms and attention respond), unless
``freeze_attention`` (attention patterns of the clean run) or ``direct_effects`` (patterns,
norm scales and MLP outputs frozen; only the linear paths carry the change: then the change of
a target equals minus the graph's direct-effect edges, which the tests check).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from pyinterp.circuits.dictionary import as_dictionary, check_dictionary, targets_of
from pyinterp.circuits.replacement import _tokens_1d


def _site(dictionary, layer: int) -> str:
    return f"blocks.{layer}.ln2.hook_normalized" if dictionary.input_site == "mlp_in" \
        else f"blocks.{layer}.hook_resid_mid"


@torch.no_grad()
def intervene(model, dictionary, tokens, interventions: Sequence[tuple[int, int, int, float]], *,
              freeze_attention: bool = False, direct_effects: bool = False) -> torch.Tensor:
    """Logits (T, V) of the real model on ``tokens`` (T,) with features set to new values.

    interventions: (layer, position, feature index, value); a feature that is not active on
    the prompt starts from 0. ``direct_effects`` needs norms with ``hook_scale`` (pyinterp's
    Transformer, TransformerLens models)."""
    tokens = _tokens_1d(tokens)[None]
    dictionary = as_dictionary(dictionary)
    L = dictionary.n_layers
    check_dictionary(dictionary, L, dictionary.d_model)
    T = tokens.shape[1]
    for it in interventions:
        if len(it) != 4:
            raise ValueError(f"an intervention is (layer, position, feature, value), got {it!r}")
        s, p, i, _ = it
        if not (0 <= s < L and 0 <= p < T and 0 <= i < dictionary.d_sae(s)):
            raise ValueError(f"intervention {it!r} out of range: layer in [0, {L}), position in "
                             f"[0, {T}), feature in [0, d_sae)")
    names = [_site(dictionary, l) for l in range(L)]
    if freeze_attention or direct_effects:
        names += [f"blocks.{l}.attn.hook_pattern" for l in range(L)]
    if direct_effects:
        scales = [f"blocks.{l}.{ln}.hook_scale" for l in range(L) for ln in ("ln1", "ln2")]
        scales.append("ln_final.hook_scale")
        missing = [n for n in scales if n not in model.hook_dict]
        if missing:
            raise ValueError(f"direct_effects freezes the norm scales, but the model has no hook "
                             f"{missing[0]!r} (use pyinterp's Transformer or a TransformerLens model)")
        names += scales + [f"blocks.{l}.hook_mlp_out" for l in range(L)]
    dev = model.W_U.device
    tokens = tokens.to(dev)
    _, clean = model.run_with_cache(tokens, names_filter=names)

    # the change of each layer's MLP output
    d = dictionary.d_model
    delta = [None] * L
    by_layer: dict[int, list[tuple[int, int, float]]] = {}
    for s, p, i, v in interventions:
        by_layer.setdefault(s, []).append((p, i, float(v)))
    for s, items in by_layer.items():
        x = clean[_site(dictionary, s)][0]
        vals, idx = dictionary.encode(s, x.to(dictionary.encoder_weight(s).dtype))
        for p, i, v in items:
            hit = (idx[p] == i) & (vals[p] != 0)
            old = float(vals[p][hit].sum()) if bool(hit.any()) else 0.0
            for t in targets_of(dictionary, s):
                if delta[t] is None:
                    delta[t] = torch.zeros(T, d, dtype=x.dtype, device=x.device)
                delta[t][p] += (v - old) * dictionary.decoder_weight(s, t)[i].to(x.dtype)

    hooks = []
    if freeze_attention or direct_effects:
        hooks += [(f"blocks.{l}.attn.hook_pattern", _const(clean[f"blocks.{l}.attn.hook_pattern"]))
                  for l in range(L)]
    current = {}
    if direct_effects:
        hooks += [(n, _const(clean[n])) for n in scales]
        for l in range(L):
            hooks.append((_site(dictionary, l), _keep(current, l)))
            hooks.append((f"blocks.{l}.hook_mlp_out", _frozen_mlp(dictionary, l, clean, current, delta[l])))
    else:
        hooks += [(f"blocks.{l}.hook_mlp_out", _add(delta[l])) for l in range(L) if delta[l] is not None]
    with model.hooks(hooks):
        return model(tokens)[0]


def _const(value):
    return lambda x, hook: value.to(x.dtype)


def _keep(store, layer):
    def fn(x, hook):
        store[layer] = x
    return fn


def _add(delta):
    return lambda x, hook: x + delta.to(x.dtype)


def _frozen_mlp(dictionary, layer, clean, current, delta):
    site = _site(dictionary, layer)

    def fn(x, hook):
        out = clean[f"blocks.{layer}.hook_mlp_out"].to(x.dtype)
        w = dictionary.skip_weight(layer)
        if w is not None:  # the skip is a linear path: it follows the intervened input
            out = out + (current[layer] - clean[site].to(x.dtype)) @ w.to(x.dtype)
        return out if delta is None else out + delta.to(x.dtype)
    return fn


def ablate(model, dictionary, tokens, features: Sequence[tuple[int, int, int]], **kw) -> torch.Tensor:
    """Logits (T, V) with the given (layer, position, feature) set to 0 (see :func:`intervene`)."""
    return intervene(model, dictionary, tokens, [(l, p, f, 0.0) for l, p, f in features], **kw)


def demeaned_logit(logits: torch.Tensor, token: int, position: int = -1) -> float:
    """logit[token] - mean logit at ``position``: the quantity a logit node is attributed for."""
    row = logits[position].double()
    return float(row[token] - row.mean())


def compare_ablations(graph, model, dictionary, groups: Sequence[Sequence[int]], root: int = 0,
                      freeze_attention: bool = False) -> list[dict]:
    """For each group of feature nodes of ``graph``: the graph's prediction (minus the sum of
    their direct effects on logit target ``root``) beside the change of that demeaned logit in
    the real model when they are ablated together ("actual"), and the same change read with the
    final norm's scale held at its clean value ("actual_fixed_norm"): the graph linearises at
    that scale, while the real final norm rescales every logit when a large component leaves
    the residual stream."""
    from pyinterp.circuits._weights import model_weights

    node = int(graph.roots[root])
    if graph.kind(node) != "logit":
        raise ValueError("compare_ablations compares logit targets; root must be a logit node")
    token = int(graph.logit_tokens[node - graph.logit_start])
    W = model_weights(model, model.W_U.dtype)
    final = f"blocks.{W.n_layers - 1}.hook_resid_post"
    seen = {}

    def grab(x, hook):
        seen["r"] = x[0, -1].detach().to(W.W_U.dtype)

    with model.hooks([(final, grab)]):
        clean = intervene(model, dictionary, graph.tokens, [], freeze_attention=freeze_attention)
    r0 = seen["r"]
    s0 = W.ln_final.scale(r0[None])

    def fixed(r):
        row = W.ln_final.forward(r[None], s0)[0] @ W.W_U
        return float(row[token] - row.mean())

    base, base_fixed = demeaned_logit(clean, token), fixed(r0)
    out = []
    for group in groups:
        feats = []
        for j in group:
            if graph.kind(int(j)) != "feature":
                raise ValueError(f"node {j} is a {graph.kind(int(j))} node; only features can be ablated")
            feats.append((int(graph.feat_layer[j]), int(graph.feat_pos[j]), int(graph.feat_index[j])))
        pred = -float(graph.root_rows[root, list(map(int, group))].sum())
        with model.hooks([(final, grab)]):
            new = ablate(model, dictionary, graph.tokens, feats, freeze_attention=freeze_attention)
        out.append({"nodes": [int(j) for j in group], "labels": [graph.label(int(j)) for j in group],
                    "predicted": pred, "actual": demeaned_logit(new, token) - base,
                    "actual_fixed_norm": fixed(seen["r"]) - base_fixed, "token": token})
    return out
