"""Dictionaries over several layers: crosscoders and cross-layer transcoders (CLTs).

**Crosscoder** (Lindsey et al. 2024): one latent space read from and written to L layers,

    f = act(sum_l x^l @ W_enc[l] + b_enc),   x_hat^l = f @ W_dec[l] + b_dec[l],

with the ReLU / JumpReLU-tanh sparsity weighted by sum_l ||W_dec[l, i]||. The encoder is one
GEMM over the layers' concatenated activations. The decoders are L parameters (``W_dec[l]``,
(d_sae, d_in) each) decoded one layer at a time (:func:`pyinterp.ops.multi_decode` with one
output), so backward forms one layer's decoder gradient at a time and the optimizer in
backward frees it before the next (docs/decisions/dictionary-memory-target.md); files and
checkpoints hold them stacked as one ``W_dec`` (L, d_sae, d_in).

**Cross-layer transcoder** (Ameisen et al. 2025): layer l's features read the MLP input of
layer l and write to the MLP outputs of layers l..L-1,

    f^l = act(x^l @ W_enc[l] + b_enc[l]),   y_hat^j = sum_{l <= j} f^l @ W_dec^{l->j} + b_dec[j].

The L(L+1)/2 decoders are one packed parameter ``W_dec`` (P, d_sae, d_out), source by source
(:meth:`CrossLayerTranscoder.decoder` gives the view of one); the code of all layers is one
sparse code over L * d_sae global latents (layer l's latent i is l * d_sae + i), decoded into
the L outputs in one pass with the CLT decoder map. See docs/dictionaries.md.

Inputs/targets are given per layer (L tensors (..., d)); each layer has its own fixed
activation scale (E||s x||^2 = d) set from the first batches.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from pyinterp.ops.multi_decode import clt_decoder_map, clt_decoder_offset
from pyinterp.sae import _kernels as K
from pyinterp.sae import activations as A
from pyinterp.sae.config import SAEConfig
from pyinterp.sae.dictionary import SAELoss, SparseDictionary, rows, squared_error
from pyinterp.sae.init import activation_scale, geometric_median, random_directions
from pyinterp.sae.jumprelu_init import init_thresholds_to_l0
from pyinterp.sae.registry import register_sae_class


def _defaults(config: dict, centre: bool) -> dict:
    config = dict(config)
    config.setdefault("activation", "topk" if config.get("k") is not None else "relu")
    if not centre:
        config.setdefault("apply_b_dec_to_input", False)
    return config


def _scale_rows(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * scale.to(x.dtype)


class _Layered(SparseDictionary):
    """Shared by crosscoders and CLTs: L layers, per-layer scales, per-layer inputs."""

    def __init__(self, cfg: SAEConfig, backend: Optional[str]):
        if cfg.normalize_activations != "none":
            raise ValueError(f"{self.architecture} supports normalize_activations='none' only "
                             f"(fixed per-layer scales are learned), got {cfg.normalize_activations!r}")
        super().__init__(cfg, backend)

    @classmethod
    def _config(cls, cfg, n_layers, d_in, d_sae, config) -> SAEConfig:
        """``cfg``, or one built from the constructor's fields (never both)."""
        if cfg is None:
            return SAEConfig(architecture=cls.architecture, d_in=d_in, d_sae=d_sae,
                             n_layers=n_layers, **_defaults(config, centre=False))
        if n_layers is not None or d_in is not None or d_sae is not None or config:
            raise TypeError("pass either cfg or the config fields, not both")
        return cfg

    @property
    def n_layers(self) -> int:
        return self.cfg.n_layers

    def input_hooks(self) -> list:
        return list(self.cfg.hook_names) if self.cfg.hook_names else [None] * self.n_layers

    def batch_inputs(self, batch, name: str) -> tuple:
        if isinstance(batch, torch.Tensor):
            n = len(self.input_widths())
            if batch.dim() >= 3 and batch.shape[0] == n:
                return tuple(batch.unbind(0))
            raise ValueError(f"a tensor batch for {name!r} must stack its {n} inputs on dim 0 "
                             f"((n, N, d)), got {tuple(batch.shape)}")
        if isinstance(batch, dict) and any(h is None for h in self.input_hooks() + self.target_hooks()):
            raise ValueError(f"{self.architecture} {name!r} needs hook names to read a dict batch")
        return super().batch_inputs(batch, name)

    def write_files(self, path, feature_density=None):
        """pyinterp's layout for crosscoders / CLTs (docs/dictionaries.md, "Files")."""
        from pyinterp.sae.io_dictionaries import save_layered

        if feature_density is not None:
            raise ValueError(f"feature_density is not stored for a {self.architecture} (save "
                             "densities yourself, e.g. with pyinterp._files.atomic_save_tensors)")
        return save_layered(self, path)

    def _stack(self, xs, d: int, scale: torch.Tensor, what: str,
               rows_major: bool = False) -> torch.Tensor:
        """L tensors (..., d) (or one (L, ..., d)) -> (L, N, d) scaled, in the param dtype;
        ``rows_major``: a view of an (N, L, d) tensor (a crosscoder's encoder input, (N, L d),
        is then a view too, not a second copy)."""
        if isinstance(xs, torch.Tensor):
            if xs.dim() < 2 or xs.shape[0] != self.n_layers:
                raise ValueError(f"{what} must be {self.n_layers} tensors (..., {d}) or one "
                                 f"({self.n_layers}, ..., {d}) tensor, got {tuple(xs.shape)}")
            xs = list(xs.unbind(0))
        if len(xs) != self.n_layers:
            raise ValueError(f"{what} must give {self.n_layers} layers, got {len(xs)}")
        dev, dt = self.W_enc.device, self.W_enc.dtype
        out = [rows(x, d, f"{what}[{i}]", dev).to(dt) for i, x in enumerate(xs)]
        n = {t.shape[0] for t in out}
        if len(n) != 1:
            raise ValueError(f"every layer of {what} must have the same rows, got {sorted(n)}")
        if rows_major:
            return torch.stack(out, 1).mul_(scale.to(dt)[:, None]).permute(1, 0, 2)
        return torch.stack(out).mul_(scale.to(dt)[:, None, None])  # in place: one (L, N, d) copy


@register_sae_class
class Crosscoder(_Layered):
    """L layers in, the same L layers out, one latent space (Lindsey et al. 2024)."""

    architecture = "crosscoder"

    def __init__(self, n_layers: Optional[int] = None, d_in: Optional[int] = None,
                 d_sae: Optional[int] = None, *, cfg: Optional[SAEConfig] = None, device=None,
                 seed: Optional[int] = None, backend: Optional[str] = None, **config):
        cfg = self._config(cfg, n_layers, d_in, d_sae, config)
        super().__init__(cfg, backend)
        L, d, m = cfg.n_layers, cfg.d_in, cfg.d_sae
        kw = dict(dtype=cfg.torch_dtype, device=device)
        self.W_enc = nn.Parameter(torch.empty(L, d, m, **kw))
        self.b_enc = nn.Parameter(torch.zeros(m, **kw))
        # one parameter per layer: autograd hands a parameter's gradient over whole, so a
        # stacked (L, m, d) decoder would hold all L gradients at once
        self.W_dec = nn.ParameterList(nn.Parameter(torch.empty(m, d, **kw)) for _ in range(L))
        self.b_dec = nn.Parameter(torch.zeros(L, d, **kw))
        self.register_buffer("input_scale", torch.ones(L, dtype=torch.float32, device=device))
        self._init_activation_state((m,), device)
        self.register_state_dict_post_hook(_stack_decoders)
        self.register_load_state_dict_pre_hook(_split_decoders)
        self.reset_parameters(seed)

    def extra_repr(self) -> str:
        k = f", k={self.cfg.k}" if self.cfg.k is not None else ""
        return (f"n_layers={self.n_layers}, d_in={self.d_in}, d_sae={self.d_sae}, "
                f"activation={self.activation!r}{k}, hook_names={self.cfg.hook_names!r}")

    def input_widths(self) -> list:
        return [self.d_in] * self.n_layers

    @torch.no_grad()
    def reset_parameters(self, seed: Optional[int] = None) -> None:
        """Decoder rows of norm ``init_decoder_norm`` (0.1) per layer, the encoder their
        transpose over sqrt(L) (so pre-activations summed over layers keep their scale)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        norm = self.cfg.init_decoder_norm or 0.1
        for l in range(self.n_layers):
            w = random_directions(self.d_sae, self.d_in, norm, generator=gen)
            self.W_dec[l].copy_(w)
            self.W_enc[l].copy_(w.T / self.n_layers ** 0.5)
        self.b_enc.zero_()
        self.b_dec.zero_()

    def _centre(self) -> Optional[torch.Tensor]:
        return self.b_dec.reshape(-1) if self.cfg.apply_b_dec_to_input else None

    def _code(self, xn: torch.Tensor) -> A.Code:
        """xn: (L, N, d) scaled -> the code of the summed encoder (one GEMM over L * d)."""
        L, n, d = xn.shape
        xcat = xn.permute(1, 0, 2).reshape(n, L * d)
        return self._encode_one(xcat, self.W_enc.reshape(L * d, self.d_sae), self.b_enc,
                                self._centre())

    def checkpoint_layout(self) -> list:
        """The parameters in the order of the files (W_enc, b_enc, W_dec, b_dec, threshold),
        the L decoders as one (L, d_sae, d_in) ``W_dec`` as in the state dict (see
        :meth:`SparseDictionary.checkpoint_layout`)."""
        index = {id(p): i for i, p in enumerate(self.parameters())}
        layout = [[index[id(self.W_enc)]], [index[id(self.b_enc)]],
                  [index[id(w)] for w in self.W_dec], [index[id(self.b_dec)]]]
        if isinstance(getattr(self, "threshold", None), nn.Parameter):
            layout.append([index[id(self.threshold)]])
        return layout

    def _decode_n(self, values, indices, bias: bool = True, check_indices: bool = False,
                  norms: bool = False):
        """(L, N, d): one single-output decode per layer (each active decoder row read once
        per layer, as one L-output decode would), so that backward forms each layer's
        decoder gradient in its own node. ``norms``: also the summed decoder norms, each
        layer's formed just before its decode so that backward completes that layer's
        gradient (decode and norm terms) before moving on to the next."""
        b = [v[None] for v in self.b_dec.unbind(0)] if bias else [None] * self.n_layers
        outs, ns = [], []
        for l, W in enumerate(self.W_dec):
            if norms:
                ns.append(W.norm(dim=1))
            outs.append(K.multi_decode(values, indices, W[None], b[l],
                                       deterministic=self.deterministic,
                                       check_indices=check_indices and l == 0, **self._kw())[0])
        x_hat = torch.stack(outs)
        return (x_hat, torch.stack(ns).sum(0)) if norms else x_hat

    def encode(self, xs) -> tuple:
        """xs: L tensors (..., d_in) (or one (L, ..., d_in)) -> (values, indices) (..., k)."""
        xn = self._stack(xs, self.d_in, self.input_scale, "xs", rows_major=True)
        code = self._code(xn)
        lead = (xs[0] if not isinstance(xs, torch.Tensor) else xs[0]).shape[:-1]
        return code.values.reshape(*lead, -1), code.indices.reshape(*lead, -1)

    def decode(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """(values, indices) (..., k) -> reconstructions (L, ..., d_in) in each layer's units."""
        lead, k = values.shape[:-1], values.shape[-1]
        y = self._decode_n(values.reshape(-1, k).to(self.b_dec.dtype), indices.reshape(-1, k),
                           check_indices=True)
        y = y / self.input_scale.to(y.dtype)[:, None, None]
        return y.reshape(self.n_layers, *lead, self.d_in)

    def forward(self, xs) -> torch.Tensor:
        """xs: L tensors (..., d_in) -> reconstructions (L, ..., d_in)."""
        xn = self._stack(xs, self.d_in, self.input_scale, "xs", rows_major=True)
        code = self._code(xn)
        y = self._decode_n(code.values, code.indices) / self.input_scale.to(xn.dtype)[:, None, None]
        lead = (xs[0] if not isinstance(xs, torch.Tensor) else xs[0]).shape[:-1]
        return y.reshape(self.n_layers, *lead, self.d_in)

    @torch.no_grad()
    def reconstruct(self, *xs) -> tuple:
        """(values, indices, xs (L, N, d_in), reconstructions (L, N, d_in)) in xs' units."""
        xn = self._stack(list(xs), self.d_in, self.input_scale, "xs", rows_major=True)
        code = self._code(xn)
        scale = self.input_scale.to(xn.dtype)[:, None, None]
        return code.values, code.indices, xn / scale, self._decode_n(code.values, code.indices) / scale

    def decoder_norms(self) -> torch.Tensor:
        """(d_sae,) sum over layers of each latent's decoder norm (the sparsity weight)."""
        return torch.stack([W.norm(dim=1) for W in self.W_dec]).sum(0)

    def loss(self, *xs, dead_mask: Optional[torch.Tensor] = None, l1_scale: float = 1.0) -> SAELoss:
        """Training loss in normalised units: mean over rows of sum_l ||x^l - x_hat^l||^2,
        the sparsity penalty weighted by summed decoder norms, AuxK (given ``dead_mask``)."""
        if len(xs) == 1:
            xs = xs[0]
        xn = self._stack(xs, self.d_in, self.input_scale, "xs", rows_major=True)
        code = self._code(xn)
        x_hat, norms = self._decode_n(code.values, code.indices, norms=True)
        mse = squared_error(xn, x_hat)
        sparsity = self._sparsity_one(code, norms, l1_scale)
        aux = mse.new_zeros(())
        if dead_mask is not None and self.uses_auxk:
            L, n, d = xn.shape
            xcat = xn.permute(1, 0, 2).reshape(n, L * d)
            bias = self.b_enc + A.dead_bias(_check_dead(dead_mask, self.n_latents), self.b_enc.dtype)
            aux = A.auxk_loss(
                xn, x_hat, dead_mask, k_aux=self.cfg.effective_aux_k,
                coefficient=self.cfg.aux_coefficient,
                encode_dead=lambda kk: K.topk_encode(xcat, self.W_enc.reshape(L * d, -1), bias,
                                                     self._centre(), kk, **self._kw()),
                decode=lambda v, i: self._decode_n(v, i, bias=False))
        return SAELoss(mse + sparsity + aux, mse, sparsity, aux, code.values.detach(),
                       code.indices.detach(), xn.detach(), x_hat.detach())

    @torch.no_grad()
    def initialise(self, samples: tuple, normalize: bool, b_dec_init: Optional[str]) -> None:
        if normalize:
            for l, x in enumerate(samples):
                self.input_scale[l] = activation_scale(x.float())
        xn = self._stack(list(samples), self.d_in, self.input_scale, "sample")
        if b_dec_init:
            for l in range(self.n_layers):
                c = geometric_median(xn[l]) if b_dec_init == "geometric_median" else xn[l].mean(0)
                self.b_dec[l] = c.to(self.b_dec.dtype)
        if self.activation == "jumprelu" and self.cfg.init_l0:
            L, n, d = xn.shape
            init_thresholds_to_l0(self.threshold, xn.permute(1, 0, 2).reshape(n, L * d),
                                  self.W_enc.reshape(L * d, -1), self.b_enc, self._centre(),
                                  self.cfg.init_l0)


def _stack_decoders(module, state: dict, prefix: str, local_metadata) -> None:
    """state_dict post-hook: the per-layer decoders ``W_dec.0`` .. ``W_dec.{L-1}`` as one
    ``W_dec`` (L, d_sae, d_in), where it has always been (the files' layout)."""
    names = [f"{prefix}W_dec.{l}" for l in range(module.n_layers)]
    stacked = torch.stack([state.pop(n).detach() for n in names])
    items = list(state.items())
    state.clear()
    for key, value in items:  # the files' order: W_dec after b_enc
        state[key] = value
        if key == f"{prefix}b_enc":
            state[f"{prefix}W_dec"] = stacked


def _split_decoders(module, state: dict, prefix: str, local_metadata, strict, missing_keys,
                    unexpected_keys, error_msgs) -> None:
    """load_state_dict pre-hook: a stacked ``W_dec`` (L, d_sae, d_in) into the per-layer
    decoders."""
    key = f"{prefix}W_dec"
    if key not in state:
        return
    w = state.pop(key)
    want = (module.n_layers, module.d_sae, module.d_in)
    if tuple(w.shape) != want:
        error_msgs.append(f"size mismatch for {key}: copying a param with shape "
                          f"{tuple(w.shape)}, the crosscoder needs {want}")
        return
    for l in range(module.n_layers):
        state[f"{key}.{l}"] = w[l]


def _check_dead(dead_mask: torch.Tensor, n: int) -> torch.Tensor:
    if dead_mask.shape != (n,) or dead_mask.dtype != torch.bool:
        raise ValueError(f"dead_mask must be a bool tensor of shape ({n},), got "
                         f"{dead_mask.dtype} {tuple(dead_mask.shape)}")
    return dead_mask


@register_sae_class
class CrossLayerTranscoder(_Layered):
    """L layers; layer l's d_sae features read ``hook_names[l]`` and write to
    ``hook_names_out[l:]`` (Ameisen et al. 2025).

    The API circuit tracing builds on: :meth:`encode_layer` (one layer's sparse code, local
    latent indices), :meth:`encode` (all layers, global indices), :meth:`decode` (all outputs),
    :meth:`contribution` (the output at layer j written by layer l's features),
    :meth:`decoder` / :meth:`decoders_from` (weight views), ``W_enc`` (L, d_in, d_sae),
    ``b_enc`` (L, d_sae), ``b_dec`` (L, d_out), ``threshold`` (L, d_sae) for JumpReLU, and
    the per-layer ``input_scale`` / ``output_scale``.
    """

    architecture = "clt"

    def __init__(self, n_layers: Optional[int] = None, d_in: Optional[int] = None,
                 d_sae: Optional[int] = None, *, cfg: Optional[SAEConfig] = None, device=None,
                 seed: Optional[int] = None, backend: Optional[str] = None, **config):
        cfg = self._config(cfg, n_layers, d_in, d_sae, config)
        if cfg.apply_b_dec_to_input:
            raise ValueError("a CLT does not centre its inputs (b_dec is in the output space): "
                             "set apply_b_dec_to_input=False")
        super().__init__(cfg, backend)
        L, d, m, o = cfg.n_layers, cfg.d_in, cfg.d_sae, cfg.output_width
        self.decoder_map = clt_decoder_map(L)
        kw = dict(dtype=cfg.torch_dtype, device=device)
        self.W_enc = nn.Parameter(torch.empty(L, d, m, **kw))
        self.b_enc = nn.Parameter(torch.zeros(L, m, **kw))
        self.W_dec = nn.Parameter(torch.empty(L * (L + 1) // 2, m, o, **kw))
        self.b_dec = nn.Parameter(torch.zeros(L, o, **kw))
        self.register_buffer("input_scale", torch.ones(L, dtype=torch.float32, device=device))
        self.register_buffer("output_scale", torch.ones(L, dtype=torch.float32, device=device))
        self._init_activation_state((L, m), device, encoders=(L,))
        self.reset_parameters(seed)

    @property
    def d_out(self) -> int:
        return self.cfg.output_width

    @property
    def n_latents(self) -> int:
        return self.n_layers * self.d_sae

    def target_hooks(self) -> list:
        return list(self.cfg.hook_names_out) if self.cfg.hook_names_out else [None] * self.n_layers

    def input_widths(self) -> list:
        return [self.d_in] * self.n_layers + [self.d_out] * self.n_layers

    def extra_repr(self) -> str:
        k = f", k={self.cfg.k} per layer" if self.cfg.k is not None else ""
        return (f"n_layers={self.n_layers}, d_in={self.d_in}, d_sae={self.d_sae} per layer, "
                f"d_out={self.d_out}, activation={self.activation!r}{k}")

    # ------------------------------------------------------------------ weights
    def decoder(self, source: int, target: int) -> torch.Tensor:
        """W_dec^{source -> target}: (d_sae, d_out), a view of the packed parameter."""
        if not 0 <= source <= target < self.n_layers:
            raise ValueError(f"need 0 <= source <= target < {self.n_layers}, got "
                             f"{source} -> {target}")
        return self.W_dec[clt_decoder_offset(self.n_layers, source) + target - source]

    def decoders_from(self, source: int) -> torch.Tensor:
        """The decoders of layer ``source``'s features to layers source..L-1:
        (L - source, d_sae, d_out), a view."""
        o = clt_decoder_offset(self.n_layers, source)
        return self.W_dec[o:o + self.n_layers - source]

    @torch.no_grad()
    def reset_parameters(self, seed: Optional[int] = None) -> None:
        """Encoder columns and decoder rows: random directions of norm ``init_decoder_norm``
        (0.1); a target's decoders over sqrt(number of sources writing to it)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        norm = self.cfg.init_decoder_norm or 0.1
        L = self.n_layers
        for l in range(L):
            self.W_enc[l].copy_(random_directions(self.d_sae, self.d_in, norm, generator=gen).T)
            for j in range(l, L):
                self.decoder(l, j).copy_(random_directions(self.d_sae, self.d_out, norm,
                                                           generator=gen) / (j + 1) ** 0.5)
        self.b_enc.zero_()
        self.b_dec.zero_()

    # ------------------------------------------------------------------ encode / decode
    def _threshold_of(self, layer: int):
        return self.threshold[layer] if self.activation in ("jumprelu", "batchtopk") else None

    def _code_layer(self, layer: int, xn: torch.Tensor, weights=None) -> A.Code:
        W, b, thr = weights if weights is not None else (
            self.W_enc[layer], self.b_enc[layer], self._threshold_of(layer))
        return self._encode_one(xn, W, b, None, threshold=thr)

    def _code(self, xn: torch.Tensor) -> A.Code:
        """xn: (L, N, d_in) scaled -> the global code (N, sum of layer widths)."""
        # unbind, not indexing per layer: autograd then stacks the L weight gradients once
        # instead of zero-filling a full (L, d_in, d_sae) gradient for every layer
        L = self.n_layers
        Ws, bs = self.W_enc.unbind(0), self.b_enc.unbind(0)
        thrs = self.threshold.unbind(0) if self.activation in ("jumprelu", "batchtopk") \
            else [None] * L
        codes = [self._code_layer(l, xn[l], (Ws[l], bs[l], thrs[l])) for l in range(L)]
        values = torch.cat([c.values for c in codes], 1)
        indices = torch.cat([c.indices + l * self.d_sae for l, c in enumerate(codes)], 1)
        pre = torch.cat([c.pre for c in codes], 1) if codes[0].pre is not None else None
        return A.Code(values, indices, pre)

    def _decode_n(self, values, indices, bias: bool = True, check_indices: bool = False,
                  outputs: Optional[Sequence[int]] = None):
        dmap = self.decoder_map if outputs is None else [[row[j] for j in outputs]
                                                        for row in self.decoder_map]
        b = None
        if bias:
            b = self.b_dec if outputs is None else self.b_dec[list(outputs)]
        return K.multi_decode(values, indices, self.W_dec, b, decoder_map=dmap,
                              deterministic=self.deterministic, check_indices=check_indices,
                              **self._kw())

    def encode_layer(self, layer: int, x: torch.Tensor):
        """Layer ``layer``'s features of x: (..., d_in) -> (values, indices) (..., k), indices
        local to the layer (0..d_sae-1)."""
        if not 0 <= layer < self.n_layers:
            raise ValueError(f"layer must be in [0, {self.n_layers}), got {layer}")
        xn = rows(x, self.d_in, "x", self.W_enc.device).to(self.W_enc.dtype)
        code = self._code_layer(layer, _scale_rows(xn, self.input_scale[layer]))
        lead = x.shape[:-1]
        return code.values.reshape(*lead, -1), code.indices.reshape(*lead, -1)

    def encode(self, xs):
        """xs: L tensors (..., d_in) -> the code of every layer, (values, indices) (..., k
        total), indices global (layer l's latent i is l * d_sae + i)."""
        xn = self._stack(xs, self.d_in, self.input_scale, "xs")
        code = self._code(xn)
        lead = xs[0].shape[:-1]
        return code.values.reshape(*lead, -1), code.indices.reshape(*lead, -1)

    def decode(self, values: torch.Tensor, indices: torch.Tensor, *,
               outputs: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Global code (..., k) -> outputs (L, ..., d_out) in each target's units (or only the
        layers in ``outputs``, in that order)."""
        lead, k = values.shape[:-1], values.shape[-1]
        y = self._decode_n(values.reshape(-1, k).to(self.W_dec.dtype), indices.reshape(-1, k),
                           check_indices=True, outputs=outputs)
        scale = self.output_scale if outputs is None else self.output_scale[list(outputs)]
        y = y / scale.to(y.dtype)[:, None, None]
        return y.reshape(y.shape[0], *lead, self.d_out)

    def contribution(self, source: int, target: int, values: torch.Tensor,
                     indices: torch.Tensor) -> torch.Tensor:
        """What layer ``source``'s features (local code (..., k)) write to layer ``target``'s
        output, without bias: f^source @ W_dec^{source->target}, (..., d_out) in target units."""
        W = self.decoder(source, target)
        lead, k = values.shape[:-1], values.shape[-1]
        y = K.sparse_decode(values.reshape(-1, k).to(W.dtype), indices.reshape(-1, k), W, None,
                            **self._kw())
        return (y / self.output_scale[target].to(y.dtype)).reshape(*lead, self.d_out)

    def forward(self, xs) -> torch.Tensor:
        """xs: L tensors (..., d_in) -> predicted outputs (L, ..., d_out)."""
        xn = self._stack(xs, self.d_in, self.input_scale, "xs")
        code = self._code(xn)
        y = self._decode_n(code.values, code.indices)
        y = y / self.output_scale.to(y.dtype)[:, None, None]
        lead = xs[0].shape[:-1]
        return y.reshape(self.n_layers, *lead, self.d_out)

    @property
    def layer_size(self) -> int:
        return self.d_sae

    @torch.no_grad()
    def reconstruct(self, *tensors) -> tuple:
        """(global values, indices, ys (L, N, d_out), predictions (L, N, d_out)) in ys' units."""
        xs, ys = self._split(tensors)
        xn = self._stack(xs, self.d_in, self.input_scale, "xs")
        code = self._code(xn)
        yn = self._stack(ys, self.d_out, self.output_scale, "ys")
        scale = self.output_scale.to(yn.dtype)[:, None, None]
        return code.values, code.indices, yn / scale, self._decode_n(code.values, code.indices) / scale

    # ------------------------------------------------------------------ training
    def decoder_norms(self) -> torch.Tensor:
        """(L * d_sae,) each feature's decoder norm summed over the layers it writes to."""
        return torch.cat([self.decoders_from(l).norm(dim=2).sum(0) for l in range(self.n_layers)])

    def _split(self, tensors):
        L = self.n_layers
        if len(tensors) == 2:
            return tensors[0], tensors[1]
        if len(tensors) != 2 * L:
            raise ValueError(f"a CLT loss takes {L} inputs and {L} targets (or xs, ys), got "
                             f"{len(tensors)} tensors")
        return list(tensors[:L]), list(tensors[L:])

    def loss(self, *tensors, dead_mask: Optional[torch.Tensor] = None,
             l1_scale: float = 1.0) -> SAELoss:
        """``loss(xs, ys)`` or ``loss(x_0, .., x_{L-1}, y_0, .., y_{L-1})``: mean over rows of
        sum_j ||y^j - y_hat^j||^2 (normalised units), the sparsity penalty (decoder norms
        summed over target layers), AuxK given ``dead_mask`` (L * d_sae,)."""
        xs, ys = self._split(tensors)
        xn = self._stack(xs, self.d_in, self.input_scale, "xs")
        yn = self._stack(ys, self.d_out, self.output_scale, "ys")
        if yn.shape[1] != xn.shape[1]:
            raise ValueError(f"xs and ys must have the same rows, got {xn.shape[1]} and {yn.shape[1]}")
        code = self._code(xn)
        y_hat = self._decode_n(code.values, code.indices)
        mse = squared_error(yn, y_hat)
        thr = self.threshold.reshape(-1) if self.activation == "jumprelu" else None
        sparsity = self._sparsity_one(code, self.decoder_norms(), l1_scale, threshold=thr)
        aux = mse.new_zeros(())
        if dead_mask is not None and self.uses_auxk:
            aux = self._auxk(xn, yn, y_hat, _check_dead(dead_mask, self.n_latents))
        return SAELoss(mse + sparsity + aux, mse, sparsity, aux, code.values.detach(),
                       code.indices.detach(), yn.detach(), y_hat.detach())

    def _auxk(self, xn, yn, y_hat, dead_mask):
        dead = dead_mask.reshape(self.n_layers, self.d_sae)
        k_aux = self.cfg.effective_aux_k

        def encode_dead(kk):
            parts = []
            for l in range(self.n_layers):
                bias = self.b_enc[l] + A.dead_bias(dead[l], self.b_enc.dtype)
                v, i = K.topk_encode(xn[l], self.W_enc[l], bias, None, kk, **self._kw())
                parts.append((v, i + l * self.d_sae))
            return torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)
        return A.auxk_loss(yn, y_hat, dead_mask, k_aux=k_aux * self.n_layers,
                           coefficient=self.cfg.aux_coefficient,
                           encode_dead=lambda kk: encode_dead(k_aux),
                           decode=lambda v, i: self._decode_n(v, i, bias=False))

    @torch.no_grad()
    def after_step(self, res: Optional[SAELoss] = None) -> None:
        if self.activation == "batchtopk":
            if res is not None:
                A.update_batchtopk_threshold(self.threshold, self.threshold_updates, res.values,
                                             self.cfg.threshold_lr,
                                             groups=torch.div(res.indices, self.d_sae,
                                                              rounding_mode="floor"))
            return
        super().after_step(res)

    @torch.no_grad()
    def initialise(self, samples: tuple, normalize: bool, b_dec_init: Optional[str]) -> None:
        xs, ys = self._split(samples)
        if normalize:
            for l in range(self.n_layers):
                self.input_scale[l] = activation_scale(xs[l].float())
                self.output_scale[l] = activation_scale(ys[l].float())
        xn = self._stack(xs, self.d_in, self.input_scale, "sample")
        yn = self._stack(ys, self.d_out, self.output_scale, "sample")
        if b_dec_init:
            for l in range(self.n_layers):
                c = geometric_median(yn[l]) if b_dec_init == "geometric_median" else yn[l].mean(0)
                self.b_dec[l] = c.to(self.b_dec.dtype)
        if self.activation == "jumprelu" and self.cfg.init_l0:
            for l in range(self.n_layers):
                init_thresholds_to_l0(self.threshold[l], xn[l], self.W_enc[l], self.b_enc[l], None,
                                      self.cfg.init_l0)

