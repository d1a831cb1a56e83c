"""The local replacement model of one prompt (Ameisen et al. 2025).

One forward pass of the real model is recorded: residual streams, attention patterns,
normalisation scales and MLP outputs. Each MLP is then replaced by the dictionary's
reconstruction from the features active on this prompt plus an *error* vector (the MLP output
minus the reconstruction). With patterns and scales frozen, the residual stream is linear in
its inputs, the nodes of the attribution graph:

    r_0     = embedding                                  (embedding nodes, one per position)
    m_l     = r_l + sum_h P_h (LN1(r_l) W_V_h + b_V_h) W_O_h + b_O
    r_{l+1} = m_l + sum_{s<=l} f_s W_dec^{s->l} + b_l + x_l W_skip + err_l   (feature, error nodes)
    logits  = LNf(r_L) W_U + b_U,          x_l = LN2(m_l) or m_l (the dictionary's input_site)

:meth:`LocalReplacement.forward` recomputes the logits from those pieces: it reproduces the
real forward exactly (up to float rounding) whatever the dictionary, since the error nodes hold
what the features miss. The ``*_T`` methods are the adjoints (transposes) of the linear maps,
batched over attribution targets: (B, T', d_model) gradients over the first T' positions.
"""
from __future__ import annotations

import torch

from pyinterp.circuits._patterns import RecomputedPatterns, StoredPatterns, recompute_scale
from pyinterp.circuits._weights import ModelWeights, model_weights
from pyinterp.circuits.dictionary import as_dictionary, check_dictionary, targets_of


def _site_names(n_layers: int, recompute: bool) -> list[str]:
    names = []
    for l in range(n_layers):
        names += [f"blocks.{l}.hook_resid_pre", f"blocks.{l}.hook_resid_mid", f"blocks.{l}.hook_mlp_out"]
        names += [f"blocks.{l}.attn.hook_q", f"blocks.{l}.attn.hook_k"] if recompute \
            else [f"blocks.{l}.attn.hook_pattern"]
    names.append(f"blocks.{n_layers - 1}.hook_resid_post")
    return names


def _tokens_1d(tokens) -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor):
        tokens = torch.as_tensor(tokens)
    if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"tokens must be integer token ids, got {tokens.dtype}")
    if tokens.ndim == 2 and tokens.shape[0] == 1:
        tokens = tokens[0]
    if tokens.ndim != 1 or tokens.numel() == 0:
        raise ValueError("tokens must be one prompt: shape (T,) or (1, T) with T >= 1, got "
                         f"{tuple(tokens.shape)}")
    return tokens.long()


class LocalReplacement:
    """The frozen pass of ``model`` on ``tokens`` with ``dictionary`` replacing its MLPs.

    ``patterns``: "stored" (the model's hook_pattern, any model), "recompute" (from q and k in
    query blocks, memory linear in T: pyinterp's Transformer) or "auto" (recompute when possible).

    Attributes (all on the CPU/GPU of the model, in ``dtype``): ``embed`` (T, d),
    ``patterns`` (per layer (H, T, T), see pyinterp.circuits._patterns), ``scale1/scale2[l]`` and ``scale_f`` (T, 1), ``inputs[l]``
    (T, d) the dictionary inputs, ``codes[l]`` = (values, indices) (T, k_l), ``errors[l]``
    (T, d), ``mlp_out[l]`` (T, d), ``logits`` (T, V) of the real model.
    """

    def __init__(self, model, dictionary, tokens, *, dtype: torch.dtype = torch.float32,
                 patterns: str = "auto"):
        self.weights: ModelWeights = model_weights(model, dtype)
        dictionary = as_dictionary(dictionary)
        W = self.weights
        check_dictionary(dictionary, W.n_layers, W.d_model)
        self.dictionary = dictionary
        self.dtype = dtype
        self.tokens = _tokens_1d(tokens)
        L = W.n_layers
        dev = W.W_U.device
        if patterns not in ("auto", "stored", "recompute"):
            raise ValueError(f"patterns must be 'auto', 'stored' or 'recompute', got {patterns!r}")
        scale = recompute_scale(model)
        if patterns == "recompute" and scale is None:
            raise ValueError("patterns='recompute' needs scores q.k/sqrt(d_head) under a causal mask: "
                             "pyinterp's Transformer; use patterns='stored' for this model")
        recompute = patterns == "recompute" or (patterns == "auto" and scale is not None)
        with torch.no_grad():
            logits, cache = model.run_with_cache(self.tokens[None].to(dev),
                                                 names_filter=_site_names(L, recompute))
        self.logits = logits[0].to(dtype)
        c = {k: v[0].to(dtype) for k, v in cache.items()}
        self.T = self.tokens.numel()
        self.embed = c["blocks.0.hook_resid_pre"]
        self.resid_pre = [c[f"blocks.{l}.hook_resid_pre"] for l in range(L)]
        self.resid_mid = [c[f"blocks.{l}.hook_resid_mid"] for l in range(L)]
        self.resid_final = c[f"blocks.{L - 1}.hook_resid_post"]
        if recompute:  # hook_q/hook_k: (T, H, d_head) -> (H, T, d_head)
            self.patterns = RecomputedPatterns([c[f"blocks.{l}.attn.hook_q"].transpose(0, 1) for l in range(L)],
                                               [c[f"blocks.{l}.attn.hook_k"].transpose(0, 1) for l in range(L)],
                                               scale)
        else:
            self.patterns = StoredPatterns([c[f"blocks.{l}.attn.hook_pattern"] for l in range(L)])
        self.mlp_out = [c[f"blocks.{l}.hook_mlp_out"] for l in range(L)]
        self.scale1 = [W.layers[l].ln1.scale(self.resid_pre[l]) for l in range(L)]
        self.scale2 = [W.layers[l].ln2.scale(self.resid_mid[l]) for l in range(L)]
        self.scale_f = W.ln_final.scale(self.resid_final)
        mlp_in = dictionary.input_site == "mlp_in"
        self.inputs = [W.layers[l].ln2.forward(self.resid_mid[l], self.scale2[l]) if mlp_in
                       else self.resid_mid[l] for l in range(L)]
        self.codes = []
        for l in range(L):
            with torch.no_grad():
                v, i = dictionary.encode(l, self.inputs[l].to(self._dict_dtype(l)))
            if v.shape != i.shape or v.ndim != 2 or v.shape[0] != self.T:
                raise ValueError(f"dictionary.encode(layer={l}) must return (values, indices) of shape "
                                 f"(T={self.T}, k), got {tuple(v.shape)} and {tuple(i.shape)}")
            self.codes.append((v.detach().to(dtype), i.detach().long()))
        self._dec = {}  # (source, target) -> decoder weight in dtype
        self.errors = [self.mlp_out[l] - self.reconstruction(l) for l in range(L)]

    # -- dictionary access ------------------------------------------------------------------------
    def _dict_dtype(self, layer: int) -> torch.dtype:
        return self.dictionary.encoder_weight(layer).dtype

    def encoder(self, layer: int) -> torch.Tensor:
        """(d_model, d_sae) encoder weight of ``layer`` in ``dtype`` (cached)."""
        key = ("enc", layer)
        if key not in self._dec:
            self._dec[key] = self.dictionary.encoder_weight(layer).detach().to(self.dtype)
        return self._dec[key]

    def decoder(self, source: int, target: int) -> torch.Tensor:
        key = (source, target)
        if key not in self._dec:
            self._dec[key] = self.dictionary.decoder_weight(source, target).detach().to(self.dtype)
        return self._dec[key]

    def sources_of(self, target: int) -> list[int]:
        """Dictionary layers whose features write to layer ``target``'s MLP output."""
        return [s for s in range(target + 1) if target in targets_of(self.dictionary, s)]

    def skip(self, layer: int) -> torch.Tensor | None:
        w = self.dictionary.skip_weight(layer)
        return None if w is None else w.detach().to(self.dtype)

    def reconstruction(self, layer: int, values: list[torch.Tensor] | None = None,
                       x: torch.Tensor | None = None) -> torch.Tensor:
        """Layer ``layer``'s MLP output as the dictionary reconstructs it: (T, d); ``values``
        replace the recorded feature values, ``x`` the dictionary input (for the skip)."""
        from pyinterp import ops

        out = torch.zeros_like(self.mlp_out[layer])
        for s in self.sources_of(layer):
            v = self.codes[s][0] if values is None else values[s]
            out = out + ops.sparse_decode(v, self.codes[s][1], self.decoder(s, layer))
        b = self.dictionary.output_bias(layer)
        if b is not None:
            out = out + b.detach().to(self.dtype)
        w = self.skip(layer)
        if w is not None:
            out = out + (self.inputs[layer] if x is None else x) @ w
        return out

    # -- the linear model -------------------------------------------------------------------------
    def attention(self, layer: int, r: torch.Tensor) -> torch.Tensor:
        """Attention output of ``layer`` with the frozen pattern and scale: r (T, d) -> (T, d)."""
        Ly = self.weights.layers[layer]
        a = Ly.ln1.forward(r, self.scale1[layer])
        v = torch.einsum("td,hde->hte", a, Ly.W_V)
        if Ly.b_V is not None:
            v = v + Ly.b_V[:, None, :]
        z = self.patterns.apply(layer, v)  # (H, T, e)
        out = torch.einsum("hte,hed->td", z, Ly.W_O)
        return out if Ly.b_O is None else out + Ly.b_O

    @torch.no_grad()
    def forward(self, values: list[torch.Tensor] | None = None,
                errors: list[torch.Tensor] | None = None,
                embed: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (T, V) of the replacement model: with the recorded feature values and errors
        it equals the real model's logits. ``values[l]`` (T, k_l) replace the feature values
        (same indices as ``codes``); ``errors[l]`` the error vectors; ``embed`` (T, d) the
        embeddings. Downstream features are not re-encoded (the attribution graph's linear
        model, affine in embeddings, feature values and errors)."""
        W = self.weights
        errors = self.errors if errors is None else errors
        r = self.embed if embed is None else embed
        for l in range(W.n_layers):
            m = r + self.attention(l, r)
            x = W.layers[l].ln2.forward(m, self.scale2[l]) if self.dictionary.input_site == "mlp_in" else m
            r = m + self.reconstruction(l, values, x) + errors[l]
        x = W.ln_final.forward(r, self.scale_f)
        out = x @ W.W_U
        return out if W.b_U is None else out + W.b_U

    # -- adjoints, batched over targets -----------------------------------------------------------
    def _ov_in(self, layer: int) -> torch.Tensor:
        """W_V with LN1's gain and centring folded in: (H, d, e), so that LN1's adjoint of
        ``gv @ W_Vᵀ`` is ``(gv @ W_V_foldedᵀ) / s`` (one pass over (B, T', d) instead of four)."""
        key = ("ov", layer)
        if key not in self._dec:
            Ly = self.weights.layers[layer]
            self._dec[key] = Ly.ln1.fold(Ly.W_V)
        return self._dec[key]

    def attention_T(self, layer: int, g: torch.Tensor) -> torch.Tensor:
        """Adjoint of the attention block's linear part, into the residual stream before LN1.
        g: (B, T', d) gradient at the attention output over positions < T' -> (B, T', d)."""
        Ly = self.weights.layers[layer]
        B, Tp, _ = g.shape
        H, e = Ly.W_V.shape[0], Ly.W_V.shape[2]
        W_V = self._ov_in(layer)
        inv_s = 1.0 / self.scale1[layer][:Tp]                          # (T', 1)
        gz = torch.einsum("bqd,hed->hqbe", g, Ly.W_O).reshape(H, Tp, B * e)
        gv = self.patterns.apply_T(layer, gz, Tp).reshape(H, Tp, B, e)  # keys <- queries
        return torch.einsum("hkbe,hde->bkd", gv, W_V) * inv_s

    def attention_T_onehot(self, layer: int, g: torch.Tensor, positions: torch.Tensor, Tp: int) -> torch.Tensor:
        """:meth:`attention_T` of gradients that are zero except at one position each: g (B, d)
        at ``positions`` (B,). Reads one pattern row per target: B x T' x H x d work instead of
        B x T'² x d."""
        Ly = self.weights.layers[layer]
        gz = torch.einsum("bd,hed->bhe", g, Ly.W_O)                    # (B, H, e)
        gw = torch.einsum("bhe,hde->bhd", gz, self._ov_in(layer))      # (B, H, d)
        rows = self.patterns.rows(layer, positions, Tp).transpose(1, 2) / self.scale1[layer][:Tp]
        return torch.bmm(rows, gw)                                     # (B, T', d)

    def input_T(self, layer: int, g: torch.Tensor) -> torch.Tensor:
        """Adjoint of m_l -> dictionary input x_l: g (B, T', d) at x_l -> at m_l."""
        if self.dictionary.input_site == "resid_mid":
            return g
        return self.weights.layers[layer].ln2.transpose(g, self.scale2[layer][:g.shape[1]])

    def unembed_T(self, directions: torch.Tensor) -> torch.Tensor:
        """Logit directions (B, V)-space vectors as (B, d): gradient at r_L's last position
        of ``x @ W_U @ u`` before the final norm is applied (use with :meth:`final_norm_T`)."""
        return directions @ self.weights.W_U.T

    def final_norm_T(self, g: torch.Tensor, position: int) -> torch.Tensor:
        """Adjoint of the final norm at one position: g (B, d) -> (B, d)."""
        return self.weights.ln_final.transpose(g, self.scale_f[position])


@torch.no_grad()
def spliced_logits(model, dictionary, tokens: torch.Tensor) -> torch.Tensor:
    """Logits of the *global* replacement model: every MLP output replaced by the dictionary's
    reconstruction from its own features, which read the spliced model's activations (no error
    nodes, nothing frozen). tokens: (B, T) -> (B, T, V). The paper's "matches the next token"
    measure of a CLT compares its argmax with the real model's."""
    from pyinterp import ops

    dictionary = as_dictionary(dictionary)
    L = dictionary.n_layers
    site = "ln2.hook_normalized" if dictionary.input_site == "mlp_in" else "hook_resid_mid"
    codes = {}

    def read(layer):
        def fn(x, hook):
            shape = x.shape
            codes[layer] = dictionary.encode(layer, x.reshape(-1, shape[-1]).to(
                dictionary.encoder_weight(layer).dtype)) + (x.reshape(-1, shape[-1]),)
        return fn

    def write(layer):
        def fn(y, hook):
            out = torch.zeros(y.reshape(-1, y.shape[-1]).shape, dtype=dictionary.encoder_weight(layer).dtype,
                              device=y.device)
            for s in range(layer + 1):
                if s != layer and not dictionary.cross_layer:
                    continue
                v, i, _ = codes[s]
                W = dictionary.decoder_weight(s, layer)
                out = out + ops.sparse_decode(v.to(W.dtype), i, W)
            b = dictionary.output_bias(layer)
            if b is not None:
                out = out + b
            w = dictionary.skip_weight(layer)
            if w is not None:
                out = out + codes[layer][2].to(w.dtype) @ w
            return out.reshape(y.shape).to(y.dtype)
        return fn

    hooks = [(f"blocks.{l}.{site}", read(l)) for l in range(L)]
    hooks += [(f"blocks.{l}.hook_mlp_out", write(l)) for l in range(L)]
    return model.run_with_hooks(tokens, fwd_hooks=hooks)
