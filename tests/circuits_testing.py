"""Small models and dictionaries for the circuit-tracing tests.

``RandomDictionary`` implements pyinterp.circuits.CircuitDictionary with random weights (TopK
codes through pyinterp.ops.topk_encode), per-layer or cross-layer, with or without a linear
skip, on either input site: the graph maths must be exact whatever the dictionary, because the
error nodes hold what it misses. ``NullDictionary`` has no features at all.
"""
from __future__ import annotations

import torch

from pyinterp.models import Transformer, TransformerConfig


def tiny_model(act_fn="gelu", n_layers=2, d_model=16, n_heads=2, d_vocab=29, n_ctx=24, seed=0,
               dtype="float64", positional="learned"):
    cfg = TransformerConfig(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_mlp=4 * d_model,
                            d_vocab=d_vocab, n_ctx=n_ctx, act_fn=act_fn, seed=seed, dtype=dtype,
                            init_std=0.3, positional=positional)
    m = Transformer(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-trivial biases and norm gains
        for name, p in m.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf.startswith("b") or leaf == "w":
                p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype))
    return m


class RandomDictionary:
    def __init__(self, n_layers, d_model, d_sae=40, k=5, cross_layer=True, skip=False,
                 input_site="mlp_in", seed=0, dtype=torch.float64):
        g = torch.Generator().manual_seed(seed)
        r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype)
        self.n_layers, self.d_model = n_layers, d_model
        self.input_site, self.cross_layer = input_site, cross_layer
        self.k = k
        self._d_sae = d_sae
        self.W_enc = [r(d_model, d_sae) / d_model ** 0.5 for _ in range(n_layers)]
        self.b_enc = [0.1 * r(d_sae) for _ in range(n_layers)]
        self.W_dec = {(s, t): 0.3 * r(d_sae, d_model) for s in range(n_layers) for t in range(s, n_layers)
                      if cross_layer or s == t}
        self.b_dec = [0.1 * r(d_model) for _ in range(n_layers)]
        self.W_skip = [0.1 * r(d_model, d_model) for _ in range(n_layers)] if skip else None

    def d_sae(self, layer):
        return self._d_sae

    def encode(self, layer, x):
        from pyinterp import ops

        return ops.topk_encode(x.to(self.W_enc[layer].dtype), self.W_enc[layer], self.b_enc[layer], None, self.k)

    def encoder_weight(self, layer):
        return self.W_enc[layer]

    def decoder_weight(self, source, target):
        return self.W_dec[(source, target)]

    def output_bias(self, layer):
        return self.b_dec[layer]

    def skip_weight(self, layer):
        return None if self.W_skip is None else self.W_skip[layer]


class NullDictionary(RandomDictionary):
    """No features: every MLP output is an error node."""

    def __init__(self, n_layers, d_model, dtype=torch.float64):
        super().__init__(n_layers, d_model, d_sae=1, k=1, cross_layer=False, dtype=dtype)

    def encode(self, layer, x):
        return (torch.zeros(x.shape[0], 1, dtype=x.dtype), torch.zeros(x.shape[0], 1, dtype=torch.long))

    def output_bias(self, layer):
        return None


def tokens(T=11, vocab=29, seed=3):
    return torch.randint(0, vocab, (T,), generator=torch.Generator().manual_seed(seed))
