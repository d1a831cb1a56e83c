"""The attribution graph of one prompt, its pruning and its JSON form.

Nodes are numbered as circuit-tracer numbers them: active features (sorted by layer, position,
feature index), then error nodes (layer-major: ``l * T + p``), then embedding nodes (one per
position), then logit nodes. An edge (target <- source) is the source's direct effect on the
target's input in the local replacement model: on a feature's pre-activation, or on a logit
minus the mean logit.

``Graph.to_json()`` writes the format circuit-tracer's frontend and Neuronpedia read
(circuit_tracer/frontend/graph_models.py; docs/decisions/circuits-graph-json.md).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import torch

SCHEMA_NOTE = "circuit-tracer graph JSON (frontend/graph_models.py at safety-research/circuit-tracer d797c82)"


def find_threshold(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """The score above which the largest scores sum to ``fraction`` of the total (the paper's
    cumulative-influence cut): keep ``scores >= find_threshold(scores, f)``."""
    s = torch.sort(scores.flatten(), descending=True).values
    total = s.sum()
    if s.numel() == 0 or total <= 0:
        return s.new_tensor(float("inf")) if s.numel() == 0 else s.new_tensor(0.0)
    cum = torch.cumsum(s, 0) / total
    i = int(torch.searchsorted(cum, cum.new_tensor(fraction)))
    return s[min(i, s.numel() - 1)]


def normalize_rows(A: torch.Tensor) -> torch.Tensor:
    """|A| with each row summing to 1 (rows of zeros stay zero)."""
    a = A.abs()
    return a / a.sum(1, keepdim=True).clamp(min=1e-10)


def path_influence(An: torch.Tensor, weights: torch.Tensor, max_iter: int = 1000) -> torch.Tensor:
    """weights @ (An + An^2 + ...) for a nilpotent (acyclic) normalised adjacency An."""
    cur = weights @ An
    total = cur.clone()
    for _ in range(max_iter):
        if not bool(cur.any()):
            return total
        cur = cur @ An
        total += cur
    raise RuntimeError("influence did not converge: the adjacency matrix has a cycle")


@dataclass
class Graph:
    """An attribution graph (see the module docstring for the node order).

    Tensors: ``tokens`` (T,); ``feat_layer/feat_pos/feat_index`` (n_f,) int64 and
    ``feat_value`` (n_f,) the active features; ``logit_tokens``/``logit_probs`` (n_logit,);
    ``roots`` (R,) node ids of the attribution targets and ``root_weights`` (R,);
    ``root_rows`` (R, n) their direct-effect rows (all sources); ``influence`` (n,) each node's
    influence on the weighted targets in the unpruned graph; ``node_mask`` (n,) the nodes kept
    by pruning; ``edges`` (E, 2) kept edges as (target, source) node ids and ``edge_weight`` (E,).
    """

    tokens: torch.Tensor
    token_strings: list[str]
    n_layers: int
    d_sae: list[int]
    feat_layer: torch.Tensor
    feat_pos: torch.Tensor
    feat_index: torch.Tensor
    feat_value: torch.Tensor
    logit_tokens: torch.Tensor
    logit_probs: torch.Tensor
    logit_strings: list[str]
    roots: torch.Tensor
    root_weights: torch.Tensor
    root_rows: torch.Tensor
    influence: torch.Tensor
    node_mask: torch.Tensor
    edges: torch.Tensor
    edge_weight: torch.Tensor
    scores: dict[str, float] = field(default_factory=dict)
    settings: dict[str, object] = field(default_factory=dict)
    stats: dict[str, object] = field(default_factory=dict)
    prompt: str = ""
    scan: str = "pyinterp"

    # -- node numbering ----------------------------------------------------------------------------
    @property
    def n_pos(self) -> int:
        return int(self.tokens.numel())

    @property
    def n_features(self) -> int:
        return int(self.feat_layer.numel())

    @property
    def error_start(self) -> int:
        return self.n_features

    @property
    def embed_start(self) -> int:
        return self.n_features + self.n_layers * self.n_pos

    @property
    def logit_start(self) -> int:
        return self.embed_start + self.n_pos

    @property
    def n_nodes(self) -> int:
        return self.logit_start + int(self.logit_tokens.numel())

    def kind(self, node: int) -> str:
        """"feature", "error", "embedding" or "logit"."""
        if not 0 <= node < self.n_nodes:
            raise IndexError(f"node {node} out of range [0, {self.n_nodes})")
        if node < self.error_start:
            return "feature"
        if node < self.embed_start:
            return "error"
        if node < self.logit_start:
            return "embedding"
        return "logit"

    def layer_pos(self, node: int):
        """(layer, position) of a node; layer -1 for embeddings and n_layers for logits."""
        k = self.kind(node)
        if k == "feature":
            return int(self.feat_layer[node]), int(self.feat_pos[node])
        if k == "error":
            return divmod(node - self.error_start, self.n_pos)
        if k == "embedding":
            return -1, node - self.embed_start
        return self.n_layers, self.n_pos - 1

    def feature_node(self, layer: int, pos: int, index: int) -> int:
        """Node id of an active feature; KeyError if it is not active on this prompt."""
        hit = ((self.feat_layer == layer) & (self.feat_pos == pos) & (self.feat_index == index)).nonzero()
        if hit.numel() == 0:
            raise KeyError(f"feature {index} of layer {layer} is not active at position {pos}")
        return int(hit[0, 0])

    def label(self, node: int) -> str:
        k = self.kind(node)
        layer, pos = self.layer_pos(node)
        tok = self.token_strings[pos] if pos < len(self.token_strings) else str(pos)
        if k == "feature":
            return f"L{layer} F{int(self.feat_index[node])} @{pos} {tok!r}"
        if k == "error":
            return f"L{layer} error @{pos} {tok!r}"
        if k == "embedding":
            return f"embedding @{pos} {tok!r}"
        j = node - self.logit_start
        return f"logit {self.logit_strings[j]!r} (p={float(self.logit_probs[j]):.3f})"

    def node_id(self, node: int) -> str:
        """circuit-tracer's node_id strings (error nodes: ``err_{layer}_{pos}``, see the decision)."""
        k = self.kind(node)
        layer, pos = self.layer_pos(node)
        if k == "feature":
            return f"{layer}_{int(self.feat_index[node])}_{pos}"
        if k == "error":
            return f"err_{layer}_{pos}"
        if k == "embedding":
            return f"E_{int(self.tokens[pos])}_{pos}"
        return f"{self.n_layers + 1}_{int(self.logit_tokens[node - self.logit_start])}_{pos}"

    # -- summaries ---------------------------------------------------------------------------------
    def kept_nodes(self) -> torch.Tensor:
        return self.node_mask.nonzero().flatten()

    def cumulative_influence(self) -> torch.Tensor:
        """Each node's cumulative influence fraction in the sorted order (circuit-tracer's
        ``influence`` field: small = among the most influential)."""
        s, order = torch.sort(self.influence, descending=True)
        total = s.sum()
        cum = torch.cumsum(s, 0) / total if total > 0 else torch.zeros_like(s)
        out = torch.zeros_like(self.influence)
        out[order] = cum
        return out

    def direct_effects(self, root: int = 0) -> torch.Tensor:
        """(n,) direct effect of every node on target ``root`` (index into ``roots``)."""
        return self.root_rows[root]

    def top_inputs(self, root: int = 0, k: int = 10, kinds=None) -> list[tuple]:
        """The k strongest direct inputs of target ``root``: [(node, weight, label)], by |weight|."""
        row = self.root_rows[root].clone()
        if kinds is not None:
            keep = torch.tensor([self.kind(i) in kinds for i in range(self.n_nodes)])
            row[~keep] = 0
        vals, idx = row.abs().topk(min(k, row.numel()))
        return [(int(i), float(row[i]), self.label(int(i))) for v, i in zip(vals, idx) if v > 0]

    # -- JSON ----------------------------------------------------------------------------------------
    def to_json(self, slug: str = "graph", *, indent: int | None = None) -> str:
        """The pruned graph in circuit-tracer's graph format (nodes, links, metadata, qParams)."""
        return json.dumps(self.to_dict(slug), indent=indent)

    def to_dict(self, slug: str = "graph") -> dict:
        cum = self.cumulative_influence()
        keep = set(self.kept_nodes().tolist())
        d_max = max(self.d_sae) if self.d_sae else 1
        offset = 10 ** math.ceil(math.log10(max(d_max, 2)))
        nodes = []
        for i in sorted(keep):
            k = self.kind(i)
            layer, pos = self.layer_pos(i)
            nid = self.node_id(i)
            node = {"node_id": nid, "feature": 0, "layer": "", "ctx_idx": pos, "feature_type": "",
                    "token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0,
                    "jsNodeId": nid, "clerp": "", "influence": float(cum[i]), "activation": None}
            if k == "feature":
                f = int(self.feat_index[i])
                node.update(feature=f + offset * layer, layer=str(layer),
                            feature_type="cross layer transcoder", jsNodeId=f"{layer}_{f}-0",
                            activation=float(self.feat_value[i]))
            elif k == "error":
                node.update(feature=-1, layer=str(layer), feature_type="mlp reconstruction error",
                            jsNodeId=f"{layer}_{pos}-0")
            elif k == "embedding":
                tok = int(self.tokens[pos])
                node.update(feature=pos, layer="E", feature_type="embedding", jsNodeId=f"E_{tok}-{pos}")
            else:
                j = i - self.logit_start
                tok = int(self.logit_tokens[j])
                p = float(self.logit_probs[j])
                node.update(feature=tok, layer=str(self.n_layers + 1), feature_type="logit",
                            token_prob=p, is_target_logit=j == 0, jsNodeId=f"L_{tok}-{pos}",
                            clerp=f'Output "{_pp(self.logit_strings[j])}" (p={p:.3f})')
            nodes.append(node)
        links = [{"source": self.node_id(int(s)), "target": self.node_id(int(t)), "weight": float(w)}
                 for (t, s), w in zip(self.edges.tolist(), self.edge_weight.tolist())]
        meta = {"slug": slug, "scan": self.scan, "transcoder_list": [],
                "prompt_tokens": [_pp(t) for t in self.token_strings], "prompt": self.prompt,
                "node_threshold": self.settings.get("node_threshold"),
                "pyinterp": {"schema": SCHEMA_NOTE, "edge_threshold": self.settings.get("edge_threshold"),
                             "n_layers": self.n_layers, "scores": self.scores, "stats": self.stats}}
        return {"metadata": meta,
                "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "",
                            "sg_pos": ""},
                "nodes": nodes, "links": links}


def _pp(token: str) -> str:
    """circuit-tracer's display form of a token (newline, tab and carriage return as symbols)."""
    return token.replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")
