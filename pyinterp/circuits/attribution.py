"""Attribution graphs with memory that grows with the active nodes, not with their square.

    graph = attribute(model, dictionary, tokens)            # top logits to 95% probability
    graph = attribute(model, clt, tokens, features=[(1, 7, 42)])   # rooted at a feature

How (the maths of Ameisen et al. 2025, circuit-tracer's numbering and pruning rules):

1. The local replacement model of the prompt (:class:`LocalReplacement`) is linear, so the row
   of direct effects into one target is one *transposed* pass: inject the target's input
   direction (a demeaned unembedding column through the final norm, or a feature's encoder
   row through LN2) and carry it down the residual stream with the adjoints of the frozen
   attention and norms, reading off at each MLP output the dot products with the decoder rows
   of the active features (the backward of :func:`pyinterp.ops.sparse_decode` w.r.t. its
   values), the error vectors and, at the bottom, the embeddings. Targets go in batches (one
   (B, T', d) gradient, T' = the batch's last position + 1: nothing after it matters) and the
   first attention step reads one pattern row per target.
2. Node influence (the paper's indirect effects ``w @ (Â + Â² + ...)``, Â the row-normalised
   |adjacency|) needs no adjacency matrix: edges only go from lower to higher layers, so rows
   are computed top-down (logits, then layer L-1's features, ...) and each normalised row is
   folded into the influence of its sources as soon as it is computed, when the influence of
   its own node is already final. Features with no influence are never expanded. Memory:
   O(B x n_nodes + B x T x d), never n_nodes².
3. Pruning as circuit-tracer: nodes up to ``node_threshold`` of the cumulative influence
   (embeddings and logits always kept), then the rows of the kept nodes are recomputed over
   the kept columns only (a small matrix) and edges are cut at ``edge_threshold`` of the edge
   scores, then nodes left without outgoing (features, errors) or incoming (features) edges
   are dropped until nothing changes.
4. Scores on the unpruned graph, accumulated while streaming: replacement = influence of
   embeddings / (embeddings + errors); completeness = influence-weighted mean over nodes of
   the non-error share of each node's inputs.

``max_feature_nodes`` caps the number of feature rows (circuit-tracer's option): each layer
gets a share of what is left in proportion to its active features and expands its most
influential ones; the others stay leaves (docs/decisions/circuits-streaming-attribution.md).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import torch

from pyinterp.circuits.graph import Graph, find_threshold, normalize_rows
from pyinterp.circuits.replacement import LocalReplacement


class _Nodes:
    """Node numbering of a replacement model (see pyinterp.circuits.graph)."""

    def __init__(self, rm: LocalReplacement, n_logits: int):
        T, L = rm.T, rm.weights.n_layers
        layers, pos, index, value, slot_node = [], [], [], [], []
        start = 0
        self.layer_range = []
        for s in range(L):
            v, i = rm.codes[s]
            active = v != 0
            p, j = active.nonzero(as_tuple=True)
            idx = i[p, j]
            order = torch.argsort(p * (int(i.max()) + 2 if i.numel() else 1) + idx)  # (pos, index)
            p, j, idx = p[order], j[order], idx[order]
            n = p.numel()
            sn = torch.full(v.shape, -1, dtype=torch.long, device=v.device)
            sn[p, j] = torch.arange(start, start + n, device=v.device)
            slot_node.append(sn)
            layers.append(torch.full((n,), s, dtype=torch.long, device=v.device))
            pos.append(p)
            index.append(idx)
            value.append(v[p, j])
            self.layer_range.append((start, start + n))
            start += n
        self.n_features = start
        self.feat_layer = torch.cat(layers)
        self.feat_pos = torch.cat(pos)
        self.feat_index = torch.cat(index)
        self.feat_value = torch.cat(value)
        self.error_start = start
        self.embed_start = start + L * T
        self.logit_start = self.embed_start + T
        self.n = self.logit_start + n_logits
        self.dummy = self.n  # rows carry one extra column that padding slots write to
        self.slot_node = [torch.where(sn < 0, torch.full_like(sn, self.dummy), sn) for sn in slot_node]


def salient_logits(logits: torch.Tensor, max_n_logits: int = 10, desired_logit_prob: float = 0.95):
    """The most likely next tokens until their probability reaches ``desired_logit_prob`` (at most
    ``max_n_logits``): logits (V,) -> (token ids (n,), probabilities (n,))."""
    probs = torch.softmax(logits.double(), -1)
    top_p, top_i = probs.topk(min(max_n_logits, probs.numel()))
    n = int(torch.searchsorted(torch.cumsum(top_p, 0), top_p.new_tensor(desired_logit_prob))) + 1
    n = min(n, top_i.numel())
    return top_i[:n], top_p[:n].to(logits.dtype)


class _RowEngine:
    """Direct-effect rows of batches of targets: transposed passes over the replacement model."""

    def __init__(self, rm: LocalReplacement, nodes: _Nodes, readout: str = "sparse"):
        self.rm, self.nodes = rm, nodes
        self.readout = readout
        self.L = rm.weights.n_layers
        self.skips = [rm.skip(l) for l in range(self.L)]

    def _feature_edges(self, s: int, l: int, G: torch.Tensor) -> torch.Tensor:
        """G (B, T', d) at layer l's MLP output -> (B, T', k_s): activation x decoder . G for
        each code slot of layer s (the backward of sparse_decode w.r.t. its values)."""
        v, idx = self.rm.codes[s]
        B, Tp, d = G.shape
        v, idx = v[:Tp], idx[:Tp]
        k = v.shape[1]
        W = self.rm.decoder(s, l)
        if self.readout == "gather":  # plain torch, for comparison
            return torch.einsum("btd,tkd->btk", G, W[idx]) * v
        from pyinterp import ops

        vv = v.expand(B, Tp, k).reshape(B * Tp, k).detach().requires_grad_(True)
        ii = idx.expand(B, Tp, k).reshape(B * Tp, k)
        with torch.enable_grad():
            out = ops.sparse_decode(vv, ii, W, check_indices=False)
            (gv,) = torch.autograd.grad(out, vv, G.reshape(B * Tp, d))
        return gv.view(B, Tp, k) * v

    def layout(self, start_layer: int, at_output: bool, Tp: int):
        """The columns a row can have: features of the layers below the target (all layers for
        logits), errors of those layers and embeddings, at positions < T'. Returns (global node
        ids (W,), feature width, error layers); row buffers get W + 1 columns (the last one
        takes padding slots)."""
        n = self.nodes
        n_el = self.L if at_output else start_layer
        f_end = n.n_features if at_output else n.layer_range[start_layer][0]
        T = self.rm.T
        dev = self.rm.embed.device
        ar = torch.arange(Tp, device=dev)
        parts = [torch.arange(f_end, device=dev)]
        parts += [n.error_start + l * T + ar for l in range(n_el)]
        parts.append(n.embed_start + ar)
        return torch.cat(parts), f_end, n_el

    def _readout(self, l: int, G: torch.Tensor, R: torch.Tensor, f_end: int) -> None:
        """Add the direct effects of layer l's error nodes and of the features writing to
        layer l's MLP output to the compact rows R (B, W + 1); G: (B, T', d) at that output."""
        n, rm = self.nodes, self.rm
        B, Tp, _ = G.shape
        e0 = f_end + l * Tp
        R[:, e0:e0 + Tp] += torch.einsum("btd,td->bt", G, rm.errors[l][:Tp])
        dummy = R.shape[1] - 1
        for s in rm.sources_of(l):
            if rm.codes[s][0].shape[1] == 0:
                continue
            edges = self._feature_edges(s, l, G)
            slots = n.slot_node[s][:Tp].reshape(-1)
            R.index_add_(1, torch.where(slots >= f_end, torch.full_like(slots, dummy), slots), edges.reshape(B, -1))

    def rows(self, start_layer: int, positions: torch.Tensor, vectors: torch.Tensor, at_output: bool):
        """Rows for targets whose input direction ``vectors`` (B, d) sits at ``positions`` (B,)
        of the residual stream: after layer ``start_layer`` (the logits: ``at_output=True``,
        start_layer = L-1) or at its mid point (a feature of that layer). Returns (R (B, W),
        cols (W,)): R[:, j] is the direct effect of node cols[j]; every other node's is 0."""
        rm = self.rm
        B, d = vectors.shape
        Tp = int(positions.max()) + 1
        cols, f_end, n_el = self.layout(start_layer, at_output, Tp)
        R = vectors.new_zeros(B, cols.numel() + 1)
        at = torch.arange(B, device=vectors.device)
        G = None  # one-hot in position until the first attention step: kept as (B, d) vectors
        for l in range(start_layer, -1, -1):
            if at_output or l < start_layer:
                if G is None:
                    G = vectors.new_zeros(B, Tp, d)
                    G[at, positions] = vectors
                self._readout(l, G, R, f_end)
                if self.skips[l] is not None:
                    G = G + rm.input_T(l, G @ self.skips[l].T)
            if G is None:
                G = rm.attention_T_onehot(l, vectors, positions, Tp)
                G[at, positions] += vectors
            elif l == start_layer:  # still one-hot (the readout and skip act per position)
                G = G + rm.attention_T_onehot(l, G[at, positions], positions, Tp)
            else:
                G = G + rm.attention_T(l, G)
        m0 = f_end + n_el * Tp
        R[:, m0:m0 + Tp] += torch.einsum("btd,td->bt", G, rm.embed[:Tp])
        return R[:, :-1], cols


def _feature_inputs(rm: LocalReplacement, nodes: _Nodes, ids: torch.Tensor) -> torch.Tensor:
    """Input directions of feature nodes ``ids`` (one layer): their encoder rows carried back
    to the residual stream at the layer's mid point, each at its own position. (B, d)."""
    layer = int(nodes.feat_layer[ids[0]])
    enc = rm.encoder(layer)[:, nodes.feat_index[ids]].T
    if rm.dictionary.input_site == "resid_mid":
        return enc
    return rm.weights.layers[layer].ln2.transpose(enc, rm.scale2[layer][nodes.feat_pos[ids]])


def _batches(ids: torch.Tensor, pos: torch.Tensor, width: int, d: int, budget: int, elem: int,
             fixed: int | None):
    """Split ``ids`` (sorted by position) into batches whose buffers fit ``budget`` bytes: per
    target, its gradient (T' x d) and ~7 temporaries of that size in the attention adjoint, and
    its row (``width``) with its absolute value and a product. At least 16 targets a batch."""
    i, N = 0, ids.numel()
    while i < N:
        if fixed:
            b = fixed
        else:
            Tp = int(pos[ids[min(i + 511, N - 1)]]) + 1
            b = int(max(16, min(512, budget // (elem * (8 * Tp * d + 3 * width)))))
        yield ids[i:i + b]
        i += b


def attribute(model, dictionary, tokens, *, logits: Sequence[int] | None = None,
              features: Sequence[tuple[int, int, int]] | None = None, max_n_logits: int = 10,
              desired_logit_prob: float = 0.95, node_threshold: float = 0.8,
              edge_threshold: float = 0.98, max_feature_nodes: int | None = None,
              batch_size: int | None = None, memory_budget: int = 24 << 20,
              dtype: torch.dtype = torch.float32, decode: Callable[[int], str] | None = None,
              prompt: str = "", scan: str = "pyinterp", readout: str = "sparse",
              patterns: str = "auto") -> Graph:
    """The pruned attribution graph of ``tokens`` (T,) for ``model`` with ``dictionary``.

    Targets (the graph's roots): by default the most likely next tokens at the last position
    until their probability reaches ``desired_logit_prob`` (at most ``max_n_logits``), weighted
    by probability; or the given ``logits`` token ids (equal weights) and/or active ``features``
    given as (layer, position, feature index) (equal weights; then logits only if also given).
    ``batch_size`` targets per transposed pass (default: as many as fit ``memory_budget``
    bytes of buffers). ``decode(token_id) -> str`` labels tokens. ``readout``: "sparse" (feature
    edges through the backward of ``ops.sparse_decode``, the sparse kernels) or "gather" (decoder
    rows gathered once per position, one batched product; docs/decisions/circuits-streaming-attribution.md). ``patterns``: see
    :class:`LocalReplacement`. See the module docstring.
    """
    if not 0.0 <= node_threshold <= 1.0:
        raise ValueError(f"node_threshold must be in [0, 1], got {node_threshold}")
    if not 0.0 <= edge_threshold <= 1.0:
        raise ValueError(f"edge_threshold must be in [0, 1], got {edge_threshold}")
    if max_feature_nodes is not None and max_feature_nodes < 0:
        raise ValueError(f"max_feature_nodes must be >= 0 or None, got {max_feature_nodes}")
    if readout not in ("sparse", "gather"):
        raise ValueError(f"readout must be 'sparse' or 'gather', got {readout!r}")
    t0 = time.perf_counter()
    rm = LocalReplacement(model, dictionary, tokens, dtype=dtype, patterns=patterns)
    dictionary = rm.dictionary
    T, L, d = rm.T, rm.weights.n_layers, rm.weights.d_model
    dev = rm.embed.device
    last = rm.logits[-1]
    if logits is None and features is None:
        logit_ids, logit_w = salient_logits(last, max_n_logits, desired_logit_prob)
        logit_p = logit_w
    else:
        logit_ids = torch.as_tensor(list(logits or []), dtype=torch.long, device=dev)
        if logit_ids.numel() and (int(logit_ids.min()) < 0 or int(logit_ids.max()) >= last.numel()):
            raise ValueError(f"logits must be token ids in [0, {last.numel()}), got {logit_ids.tolist()}")
        logit_p = torch.softmax(last.double(), -1)[logit_ids].to(dtype)
        n_roots = logit_ids.numel() + len(features or [])
        logit_w = torch.full((logit_ids.numel(),), 1.0 / max(n_roots, 1), dtype=dtype, device=dev)
    nodes = _Nodes(rm, logit_ids.numel())
    n = nodes.n
    roots, root_w = [], []
    for j in range(logit_ids.numel()):
        roots.append(nodes.logit_start + j)
        root_w.append(float(logit_w[j]))
    feat_roots = []
    for (l, p, f) in features or []:
        hit = ((nodes.feat_layer == l) & (nodes.feat_pos == p) & (nodes.feat_index == f)).nonzero()
        if hit.numel() == 0:
            raise ValueError(f"feature target ({l}, {p}, {f}) is not active on this prompt: "
                             "features must be (layer, position, feature index) of an active feature")
        feat_roots.append(int(hit[0, 0]))
        roots.append(int(hit[0, 0]))
        root_w.append(1.0 / (logit_ids.numel() + len(features)))
    roots_t = torch.tensor(roots, dtype=torch.long, device=dev)
    w = torch.zeros(n, dtype=dtype, device=dev)
    w[roots_t] = torch.tensor(root_w, dtype=dtype, device=dev)

    engine = _RowEngine(rm, nodes, readout)
    elem = torch.finfo(dtype).bits // 8
    coef = w.clone()                 # w + influence: final for a node once its consumers are done
    err_share = torch.zeros(n, dtype=dtype, device=dev)
    expanded = torch.zeros(n, dtype=torch.bool, device=dev)
    root_rows = torch.zeros(len(roots), n, dtype=dtype, device=dev)
    root_slot = {r: i for i, r in enumerate(roots)}
    e_lo, e_hi = nodes.error_start, nodes.embed_start
    n_rows, max_batch = 0, 0

    def absorb(ids: torch.Tensor, R: torch.Tensor, cols: torch.Tensor) -> None:
        nonlocal n_rows, max_batch
        A = R.abs()
        rs = A.sum(1).clamp(min=1e-10)
        coef.index_add_(0, cols, (coef[ids] / rs) @ A)
        is_err = (cols >= e_lo) & (cols < e_hi)
        err_share[ids] = A[:, is_err].sum(1) / rs
        expanded[ids] = True
        n_rows += ids.numel()
        max_batch = max(max_batch, ids.numel())
        for b, i in enumerate(ids.tolist()):
            if i in root_slot:
                root_rows[root_slot[i], cols] = R[b]

    # logit rows
    if logit_ids.numel():
        u = rm.weights.W_U[:, logit_ids].T - rm.weights.W_U.mean(1)   # demeaned unembedding (n_l, d)
        g = rm.final_norm_T(u, T - 1)
        lids = torch.arange(nodes.logit_start, n, device=dev)
        lpos = torch.full((n,), T - 1, dtype=torch.long, device=dev)
        width = nodes.n_features + (L + 1) * T
        i = 0
        for ids in _batches(lids, lpos, width, d, memory_budget, elem, batch_size):
            absorb(ids, *engine.rows(L - 1, lpos[ids], g[i:i + ids.numel()], at_output=True))
            i += ids.numel()

    # feature rows, top layer first
    budget = max_feature_nodes
    active_per_layer = [hi - lo for lo, hi in nodes.layer_range]
    for l in range(L - 1, -1, -1):
        lo, hi = nodes.layer_range[l]
        if hi == lo:
            continue
        cand = torch.arange(lo, hi, device=dev)[coef[lo:hi] > 0]
        if budget is not None:
            share = sum(active_per_layer[:l + 1])
            quota = min(budget, math.ceil(budget * active_per_layer[l] / max(share, 1)))
            cand = cand[torch.argsort(coef[cand], descending=True)[:quota]]
            budget -= cand.numel()
        if cand.numel() == 0:
            continue
        cand = cand[torch.argsort(nodes.feat_pos[cand], stable=True)]  # similar T' per batch
        width = lo + (l + 1) * T
        for ids in _batches(cand, nodes.feat_pos, width, d, memory_budget, elem, batch_size):
            vec = _feature_inputs(rm, nodes, ids)
            absorb(ids, *engine.rows(l, nodes.feat_pos[ids], vec, at_output=False))
    influence = coef - w
    t_stream = time.perf_counter() - t0

    # scores of the unpruned graph
    emb = influence[nodes.embed_start:nodes.logit_start].sum()
    err = influence[e_lo:e_hi].sum()
    replacement = float(emb / (emb + err)) if float(emb + err) > 0 else float("nan")
    completeness = float(((1 - err_share) * coef).sum() / coef.sum())

    # node pruning, then the kept rows over the kept columns, then edge pruning. Only features
    # and logits have rows: the matrix is (row nodes x kept nodes), both small.
    node_mask = influence >= find_threshold(influence, node_threshold)
    node_mask[nodes.embed_start:] = True
    node_mask[roots_t] = True
    kept = node_mask.nonzero().flatten()
    col = torch.full((n + 1,), -1, dtype=torch.long, device=dev)
    col[kept] = torch.arange(kept.numel(), device=dev)
    kept_rows = kept[(kept < nodes.error_start) & expanded[kept]]
    row_nodes = torch.cat([kept_rows, torch.arange(nodes.logit_start, n, device=dev)])
    rk = col[row_nodes]                                   # their places among the kept nodes
    place = {int(v): i for i, v in enumerate(row_nodes.tolist())}
    A = torch.zeros(row_nodes.numel(), kept.numel(), dtype=dtype, device=dev)
    for l in range(L - 1, -1, -1):
        lo, hi = nodes.layer_range[l]
        ids = kept_rows[(kept_rows >= lo) & (kept_rows < hi)]
        ids = ids[torch.argsort(nodes.feat_pos[ids], stable=True)]
        for b in _batches(ids, nodes.feat_pos, lo + (l + 1) * T, d, memory_budget, elem, batch_size):
            R, cols = engine.rows(l, nodes.feat_pos[b], _feature_inputs(rm, nodes, b), at_output=False)
            at = torch.full((n + 1,), -1, dtype=torch.long, device=dev)
            at[cols] = torch.arange(cols.numel(), device=dev)
            kc = at[kept]
            A[[place[int(v)] for v in b.tolist()]] = torch.where(kc >= 0, R[:, kc.clamp(min=0)], 0)
    for j in range(logit_ids.numel()):  # logits come first among the roots
        A[place[nodes.logit_start + j]] = root_rows[j, kept]
    wk = w[kept]
    edge_mask, node_keep = _prune_edges(A, rk, wk, kept, col[roots_t], nodes, edge_threshold)
    node_mask[kept] = node_keep
    r_i, c_i = (edge_mask & (A != 0)).nonzero(as_tuple=True)
    edges = torch.stack([row_nodes[r_i], kept[c_i]], 1)
    stats = {"n_features_active": nodes.n_features, "n_nodes": n, "rows_computed": n_rows,
             "rows_recomputed_for_pruning": int(kept_rows.numel()), "max_batch": max_batch,
             "seconds_stream": t_stream, "seconds_total": time.perf_counter() - t0,
             "n_kept_nodes": int(node_mask.sum()), "n_kept_features": int(node_mask[:nodes.n_features].sum()),
             "n_edges": int(edges.shape[0])}
    scores = {"replacement": replacement, "completeness": completeness}
    scores.update(_pruned_scores(A, rk, wk, edge_mask, node_keep, kept, nodes))
    scores["kept_influence_fraction"] = float(influence[node_mask].sum() / influence.sum()) \
        if float(influence.sum()) > 0 else float("nan")
    dec = decode or str
    toks = rm.tokens.tolist()
    return Graph(
        tokens=rm.tokens.cpu(), token_strings=[dec(t) for t in toks], n_layers=L,
        d_sae=[int(dictionary.d_sae(l)) for l in range(L)], feat_layer=nodes.feat_layer.cpu(),
        feat_pos=nodes.feat_pos.cpu(), feat_index=nodes.feat_index.cpu(),
        feat_value=nodes.feat_value.cpu(), logit_tokens=logit_ids.cpu(),
        logit_probs=logit_p.cpu(), logit_strings=[dec(int(t)) for t in logit_ids.tolist()],
        roots=roots_t.cpu(), root_weights=w[roots_t].cpu(), root_rows=root_rows.cpu(),
        influence=influence.cpu(), node_mask=node_mask.cpu(), edges=edges.cpu(),
        edge_weight=A[r_i, c_i].cpu(), scores=scores,
        settings={"node_threshold": node_threshold, "edge_threshold": edge_threshold,
                  "max_feature_nodes": max_feature_nodes, "max_n_logits": max_n_logits,
                  "desired_logit_prob": desired_logit_prob, "input_site": dictionary.input_site},
        stats=stats, prompt=prompt, scan=scan)


def _influence_rect(An: torch.Tensor, rk: torch.Tensor, w: torch.Tensor, max_iter: int = 1000) -> torch.Tensor:
    """w @ (Â + Â² + ...) for Â given by its non-zero rows An (rows of the nodes ``rk``)."""
    cur = w[rk] @ An
    total = cur.clone()
    for _ in range(max_iter):
        if not bool(cur.any()):
            return total
        cur = cur[rk] @ An
        total += cur
    raise RuntimeError("influence did not converge: the adjacency matrix has a cycle")


def _prune_edges(A: torch.Tensor, rk: torch.Tensor, wk: torch.Tensor, kept: torch.Tensor,
                 root_cols: torch.Tensor, nodes: _Nodes, edge_threshold: float):
    """circuit-tracer's edge pruning on the kept-node matrix (rows ``rk`` of it in A): returns
    the kept edges (as a mask of A) and the kept nodes (targets are never dropped)."""
    An = normalize_rows(A)
    infl = _influence_rect(An, rk, wk) + wk
    scores = An * infl[rk][:, None]
    edge_mask = scores >= find_threshold(scores, edge_threshold)
    m = kept.numel()
    is_root = torch.zeros(m, dtype=torch.bool, device=A.device)
    is_root[root_cols] = True
    is_feat = (kept < nodes.error_start) & ~is_root
    must_out = (kept < nodes.embed_start) & ~is_root  # features and errors need an outgoing edge
    node_keep = torch.ones(m, dtype=torch.bool, device=A.device)
    while True:
        before = node_keep.clone()
        edge_mask &= node_keep[rk][:, None] & node_keep[None, :]
        node_keep &= ~must_out | edge_mask.any(0)
        has_in = torch.zeros(m, dtype=torch.bool, device=A.device)
        has_in[rk] = edge_mask.any(1)
        node_keep &= ~is_feat | has_in
        if torch.equal(before, node_keep):
            break
    return edge_mask, node_keep


def _pruned_scores(A, rk, wk, edge_mask, node_keep, kept, nodes) -> dict:
    """Replacement and completeness of the pruned graph (kept nodes and edges only)."""
    An = normalize_rows(torch.where(edge_mask, A, torch.zeros_like(A)))
    infl = _influence_rect(An, rk, wk * node_keep)
    is_emb = (kept >= nodes.embed_start) & (kept < nodes.logit_start)
    is_err = (kept >= nodes.error_start) & (kept < nodes.embed_start)
    emb, err = infl[is_emb].sum(), infl[is_err].sum()
    coef = infl + wk * node_keep
    nonerr = torch.ones_like(coef)
    nonerr[rk] = 1 - An[:, is_err].sum(1)
    return {"replacement_pruned": float(emb / (emb + err)) if float(emb + err) > 0 else float("nan"),
            "completeness_pruned": float((nonerr * coef).sum() / coef.sum()) if float(coef.sum()) > 0
            else float("nan")}
