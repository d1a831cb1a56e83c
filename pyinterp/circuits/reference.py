"""The dense reference: circuit-tracer's method, written plainly, as the oracle and baseline.

The real model runs with hooks that freeze the attention patterns and norm scales (detach),
cut the MLPs out of the backward pass (their outputs become constants plus a zero tensor we
differentiate against, plus the dictionary's linear skip), and make the embedding a leaf.
Each target's row is one ``torch.autograd.grad`` call (one target per backward pass); rows go
into a dense (n_nodes, n_nodes) adjacency; influence is ``w @ (Â + Â² + ...)`` by repeated
dense products; pruning and scores follow circuit-tracer's ``prune_graph`` and
``compute_graph_scores``. Nothing here is shared with :mod:`pyinterp.circuits.attribution`.

Only pyinterp's own :class:`~pyinterp.models.Transformer` (it has ``hook_scale`` on its norms).
Memory is O(n_nodes²): use it for tests and as the benchmark baseline.
"""
from __future__ import annotations

import torch


def _threshold(scores: torch.Tensor, frac: float) -> torch.Tensor:
    s = torch.sort(scores.flatten(), descending=True).values
    cum = torch.cumsum(s, 0) / s.sum()
    i = min(int(torch.searchsorted(cum, cum.new_tensor(frac))), s.numel() - 1)
    return s[i]


def _norm(A):
    a = A.abs()
    return a / a.sum(1, keepdim=True).clamp(min=1e-10)


def _influence(An, w):
    cur = w @ An
    out = cur.clone()
    while bool(cur.any()):
        cur = cur @ An
        out = out + cur
    return out


def dense_attribution(model, dictionary, tokens, *, node_threshold: float = 0.8,
                      edge_threshold: float = 0.98, max_n_logits: int = 10,
                      desired_logit_prob: float = 0.95, dtype: torch.dtype = torch.float64,
                      logits: list | None = None) -> dict:
    """Dense attribution graph of ``tokens`` (T,) as a dict of tensors (see module docstring).

    Keys: adjacency (n, n) (rows: targets, cols: sources), influence (n,), node_mask (n,),
    edge_mask (n, n), feat (n_f, 3) (layer, pos, index), feat_value, logit_tokens,
    logit_probs, replacement, completeness, n_features, n_nodes. The model must be float64
    for exact comparisons (``dtype`` is the arithmetic of the dense maths)."""
    tokens = torch.as_tensor(tokens).reshape(-1).long()
    T = tokens.numel()
    L = model.cfg.n_layers
    site = dictionary.input_site
    captured = {}

    def detach(x, hook):
        return x.detach()

    def leaf(x, hook):
        captured["emb"] = x.detach().requires_grad_(True)
        return captured["emb"]

    def grab(name):
        def fn(x, hook):
            captured[name] = x
        return fn

    def mlp_out(layer):
        def fn(x, hook):
            xin = captured[f"in{layer}"]
            w = dictionary.skip_weight(layer)
            skip = xin @ w.to(xin.dtype) if w is not None else torch.zeros_like(x)
            z = torch.zeros_like(x, requires_grad=True)
            captured[f"z{layer}"] = z
            captured[f"out{layer}"] = x.detach()
            return x.detach() + z + (skip - skip.detach())
        return fn

    hooks = [("blocks.0.hook_resid_pre", leaf), ("ln_final.hook_scale", detach),
             ("ln_final.hook_normalized", grab("final"))]
    for l in range(L):
        hooks += [(f"blocks.{l}.ln1.hook_scale", detach), (f"blocks.{l}.ln2.hook_scale", detach),
                  (f"blocks.{l}.attn.hook_pattern", detach),
                  (f"blocks.{l}.ln2.hook_normalized" if site == "mlp_in" else f"blocks.{l}.hook_resid_mid",
                   grab(f"in{l}")),
                  (f"blocks.{l}.hook_mlp_out", mlp_out(l))]
    with torch.enable_grad(), model.hooks(hooks):
        out = model(tokens[None])
    last = out[0, -1].detach()
    emb = captured["emb"][0]
    inputs = [captured[f"in{l}"][0] for l in range(L)]
    zs = [captured[f"z{l}"] for l in range(L)]

    # features: dense codes from the dictionary, sorted (layer, pos, index)
    feats, vals, dense = [], [], []
    for l in range(L):
        with torch.no_grad():
            v, i = dictionary.encode(l, inputs[l].detach().to(dictionary.encoder_weight(l).dtype))
        f = torch.zeros(T, dictionary.d_sae(l), dtype=dtype)
        f.scatter_add_(1, i.long(), v.to(dtype))
        dense.append(f)
        p, idx = (f != 0).nonzero(as_tuple=True)
        feats += [(l, int(a), int(b)) for a, b in zip(p, idx)]
        vals += f[p, idx].tolist()
    nf = len(feats)
    # errors: MLP output minus the dense reconstruction
    errs = []
    for t in range(L):
        rec = torch.zeros(T, emb.shape[-1], dtype=dtype)
        for s in range(t + 1):
            if t == s or dictionary.cross_layer:
                rec = rec + dense[s] @ dictionary.decoder_weight(s, t).to(dtype)
        b = dictionary.output_bias(t)
        if b is not None:
            rec = rec + b.to(dtype)
        w = dictionary.skip_weight(t)
        if w is not None:
            rec = rec + inputs[t].detach().to(dtype) @ w.to(dtype)
        errs.append(captured[f"out{t}"][0].to(dtype) - rec)

    probs = torch.softmax(last.double(), -1)
    if logits is None:
        tp, ti = probs.topk(max_n_logits)
        k = min(int(torch.searchsorted(torch.cumsum(tp, 0), tp.new_tensor(desired_logit_prob))) + 1, ti.numel())
        logit_tokens, logit_probs, lw = ti[:k], tp[:k].to(dtype), tp[:k].to(dtype)
    else:
        logit_tokens = torch.tensor(logits)
        logit_probs = probs[logit_tokens].to(dtype)
        lw = torch.full((len(logits),), 1.0 / len(logits), dtype=dtype)
    nl = logit_tokens.numel()
    e0, m0, l0 = nf, nf + L * T, nf + L * T + T
    n = l0 + nl
    A = torch.zeros(n, n, dtype=dtype)

    # decoder rows of the active features times their activations, per (source, target) layer
    feat_t = torch.tensor(feats, dtype=torch.long).reshape(-1, 3)
    val_t = torch.tensor(vals, dtype=dtype)
    scaled = []
    for s in range(L):
        ids = (feat_t[:, 0] == s).nonzero().flatten()
        for t in range(s, L):
            if t == s or dictionary.cross_layer:
                W = dictionary.decoder_weight(s, t).to(dtype)
                scaled.append((ids, feat_t[ids, 1], t, W[feat_t[ids, 2]] * val_t[ids, None]))

    def row(scalar):
        g = torch.autograd.grad(scalar, zs + [captured["emb"]], retain_graph=True, allow_unused=True)
        gz = [torch.zeros(T, emb.shape[-1], dtype=dtype) if x is None else x[0].to(dtype) for x in g[:L]]
        ge = g[L][0].to(dtype)
        r = torch.zeros(n, dtype=dtype)
        for ids, pos, t, D in scaled:
            r.index_add_(0, ids, (D * gz[t][pos]).sum(-1))
        for t in range(L):
            r[e0 + t * T:e0 + (t + 1) * T] = (errs[t] * gz[t]).sum(-1)
        r[m0:l0] = (emb.detach().to(dtype) * ge).sum(-1)
        return r

    W_U = model.W_U.detach()
    final = captured["final"][0]
    with torch.enable_grad():
        for j in range(nl):
            u = W_U[:, logit_tokens[j]] - W_U.mean(1)
            A[l0 + j] = row(final[T - 1] @ u)
        for j, (s, p, i) in enumerate(feats):
            enc = dictionary.encoder_weight(s)[:, i].to(inputs[s].dtype)
            A[j] = row(inputs[s][p] @ enc)

    w = torch.zeros(n, dtype=dtype)
    w[l0:] = lw
    An = _norm(A)
    infl = _influence(An, w)
    replacement = float(infl[m0:l0].sum() / (infl[m0:l0].sum() + infl[e0:m0].sum()))
    nonerr = 1 - An[:, e0:m0].sum(1)
    outw = infl + w
    completeness = float((nonerr * outw).sum() / outw.sum())

    node_mask = infl >= _threshold(infl, node_threshold)
    node_mask[m0:] = True
    P = A.clone()
    P[~node_mask] = 0
    P[:, ~node_mask] = 0
    Pn = _norm(P)
    edge_scores = Pn * (_influence(Pn, w) + w)[:, None]
    edge_mask = edge_scores >= _threshold(edge_scores, edge_threshold)
    old = node_mask.clone()
    node_mask[:m0] &= edge_mask[:, :m0].any(0)
    node_mask[:nf] &= edge_mask[:nf].any(1)
    while not torch.equal(old, node_mask):
        old = node_mask.clone()
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
        node_mask[:m0] &= edge_mask[:, :m0].any(0)
        node_mask[:nf] &= edge_mask[:nf].any(1)
    edge_mask[~node_mask] = False
    edge_mask[:, ~node_mask] = False
    return {"adjacency": A, "influence": infl, "node_mask": node_mask, "edge_mask": edge_mask,
            "feat": torch.tensor(feats, dtype=torch.long).reshape(-1, 3),
            "feat_value": torch.tensor(vals, dtype=dtype), "logit_tokens": logit_tokens,
            "logit_probs": logit_probs, "replacement": replacement, "completeness": completeness,
            "n_features": nf, "n_nodes": n}
