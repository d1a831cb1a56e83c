"""Sparse autoencoders: ReLU+L1 ("standard"), TopK, BatchTopK, JumpReLU (trained with its
threshold's straight-through estimator) and the Matryoshka TopK / BatchTopK dictionaries.

Every module maps activations x: (..., d_in) to a sparse code given as ``(values, indices)``,
each (..., k) (k fixed for TopK; a per-call padded width for the threshold codes, padding
has value 0 and index 0), and decodes with :func:`pyinterp.ops.sparse_decode`, so no
(N, d_sae) code is built after the encoder. Parameters follow SAELens's layout:
W_enc (d_in, d_sae), b_enc (d_sae,), W_dec (d_sae, d_in), b_dec (d_in,).

Activations are multiplied by the fixed scalar ``input_scale`` (E||s x||^2 = d_in, see
:func:`pyinterp.sae.init.activation_scale`) before encoding and divided by it after
decoding, so ``forward(x)`` is in the units of ``x``; ``loss(x)`` is in the normalised units.
Transcoders, crosscoders and cross-layer transcoders live in :mod:`pyinterp.sae.transcoders`
and :mod:`pyinterp.sae.crosscoders`.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from pyinterp.ops.multi_decode import prefix_ranges, shared_decoder_map
from pyinterp.sae import _kernels as K
from pyinterp.sae import activations as A
from pyinterp.sae import io
from pyinterp.sae.config import SAEConfig
from pyinterp.sae.dictionary import SAELoss, SparseDictionary, squared_error
from pyinterp.sae.init import activation_scale, geometric_median, random_directions
from pyinterp.sae.jumprelu_init import init_thresholds_to_l0
from pyinterp.sae.registry import get_sae_class, register_sae_class

__all__ = ["SAELoss", "SparseAutoencoder", "ReLUSAE", "TopKSAE", "BatchTopKSAE", "JumpReLUSAE",
           "MatryoshkaTopKSAE", "MatryoshkaBatchTopKSAE", "build"]


class SparseAutoencoder(SparseDictionary):
    """Base class; use :class:`ReLUSAE`, :class:`TopKSAE`, :class:`BatchTopKSAE`,
    :class:`JumpReLUSAE`, :class:`MatryoshkaTopKSAE`, :class:`MatryoshkaBatchTopKSAE`."""

    architecture: str = ""

    def __init__(self, d_in: Optional[int] = None, d_sae: Optional[int] = None, *,
                 cfg: Optional[SAEConfig] = None, device=None, seed: Optional[int] = None,
                 backend: Optional[str] = None, **config):
        if cfg is None:
            cfg = SAEConfig(architecture=self.architecture, d_in=d_in, d_sae=d_sae, **config)
        elif d_in is not None or d_sae is not None or config:
            raise TypeError("pass either cfg or the config fields, not both")
        super().__init__(cfg, backend)
        dtype = cfg.torch_dtype
        kw = dict(dtype=dtype, device=device)
        self.W_enc = nn.Parameter(torch.empty(cfg.d_in, cfg.d_sae, **kw))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
        self.W_dec = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_in, **kw))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, **kw))
        # Fixed activation scale (E||s x||^2 = d_in); a buffer so checkpoints carry it.
        self.register_buffer("input_scale", torch.ones((), dtype=torch.float32, device=device))
        self._init_activation_state((cfg.d_sae,), device)
        self.reset_parameters(seed)
        # Loaded weights carry a data-derived scale and b_dec: the trainer keeps them.
        self.register_load_state_dict_post_hook(_mark_data_initialised)

    def extra_repr(self) -> str:
        k = f", k={self.cfg.k}" if self.cfg.k is not None else ""
        return (f"d_in={self.d_in}, d_sae={self.d_sae}{k}, decoder_norm={self.cfg.decoder_norm!r}, "
                f"hook_name={self.hook_name!r}")

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def reset_parameters(self, seed: Optional[int] = None) -> None:
        """Random unit directions for W_dec rows (norm ``init_decoder_norm``: 1 for a unit
        decoder, else 0.1), W_enc = W_dec^T (Gao et al.; Anthropic's April 2024 update),
        zero biases. ``seed`` makes it reproducible without touching the global RNG."""
        gen = None
        if seed is not None:
            gen = torch.Generator().manual_seed(seed)
        norm = self.cfg.init_decoder_norm
        if norm is None:
            norm = 1.0 if self.cfg.decoder_norm == "unit" else 0.1
        w = random_directions(self.d_sae, self.d_in, norm, generator=gen)
        self.W_dec.copy_(w)
        self.W_enc.copy_(w.T)
        self.b_enc.zero_()
        self.b_dec.zero_()
        # False until a trainer sets the scale/b_dec from data or weights are loaded: only
        # then does SAETrainer leave them alone (fine-tuning must not clobber a loaded SAE).
        self.data_initialised = False

    @torch.no_grad()
    def set_input_scale(self, scale: float) -> None:
        if not scale > 0 or scale != scale or scale == float("inf"):
            raise ValueError(f"scale must be a positive finite number, got {scale}")
        self.input_scale.fill_(float(scale))

    @torch.no_grad()
    def init_b_dec(self, sample: torch.Tensor, method: str = "geometric_median") -> None:
        """Set b_dec to the geometric median (Weiszfeld) or mean of a data sample.

        sample: (N, d_in) raw activations (scaled here like every input)."""
        if method not in ("geometric_median", "mean"):
            raise ValueError(f"method must be 'geometric_median' or 'mean', got {method!r}")
        xn, _ = self._normalize_in(self._flatten(sample, "sample"))
        centre = geometric_median(xn) if method == "geometric_median" else xn.mean(0)
        self.b_dec.copy_(centre.to(self.b_dec.dtype))

    # ------------------------------------------------------------------ input handling
    def _flatten(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
        if x.dim() < 1 or x.shape[-1] != self.d_in:
            raise ValueError(f"{name} must have shape (..., d_in={self.d_in}), got {tuple(x.shape)}")
        if x.device != self.W_enc.device:
            raise ValueError(f"{name} is on {x.device} but the dictionary is on {self.W_enc.device}")
        return x.reshape(-1, self.d_in)

    def _normalize_in(self, x2d: torch.Tensor):
        """x2d: (N, d_in) raw -> (normalised (N, d_in) in the parameter dtype, state)."""
        x = x2d.to(self.W_enc.dtype) * self.input_scale.to(self.W_enc.dtype)
        mode = self.cfg.normalize_activations
        if mode == "constant_norm_rescale":
            coeff = (self.d_in ** 0.5) / x.norm(dim=-1, keepdim=True)
            return x * coeff, coeff
        if mode == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            x = x - mu
            std = x.std(dim=-1, keepdim=True)
            return x / (std + 1e-5), (mu, std)
        return x, None

    def _normalize_out(self, y: torch.Tensor, state) -> torch.Tensor:
        mode = self.cfg.normalize_activations
        if mode == "constant_norm_rescale" and state is not None:
            y = y / state
        elif mode == "layer_norm" and state is not None:
            y = y * state[1] + state[0]
        return y / self.input_scale.to(y.dtype)

    def _b_dec_in(self) -> Optional[torch.Tensor]:
        return self.b_dec if self.cfg.apply_b_dec_to_input else None

    # ------------------------------------------------------------------ the maps
    def _code(self, xn: torch.Tensor) -> A.Code:
        """xn: (N, d_in) normalised -> the code of this dictionary's latent rule (in train
        mode BatchTopK / JumpReLU use their training rules)."""
        if not self.activation:
            raise TypeError(f"{type(self).__name__} is the abstract base of the dictionaries; use "
                            "ReLUSAE, TopKSAE, BatchTopKSAE, JumpReLUSAE or a Matryoshka SAE")
        return self._encode_one(xn, self.W_enc, self.b_enc, self._b_dec_in())

    def _encode(self, xn: torch.Tensor):
        """xn: (N, d_in) normalised -> values, indices (N, k)."""
        code = self._code(xn)
        return code.values, code.indices

    def _decode(self, values, indices, check_indices: bool = False) -> torch.Tensor:
        # Indices from our own encoders are in range: skip the check (a sync on GPU).
        return K.sparse_decode(values, indices, self.W_dec, self.b_dec,
                               deterministic=self.deterministic, check_indices=check_indices,
                               **self._kw())

    def encode(self, x: torch.Tensor):
        """x: (..., d_in) -> (values, indices), each (..., k); values >= 0."""
        x2 = self._flatten(x)
        lead = x.shape[:-1]
        xn, _ = self._normalize_in(x2)
        values, indices = self._encode(xn)
        return values.reshape(*lead, -1), indices.reshape(*lead, -1)

    def decode(self, values: torch.Tensor, indices: torch.Tensor, norm_state=None) -> torch.Tensor:
        """values, indices: (..., k) -> reconstruction (..., d_in) in input units.

        With a per-row ``normalize_activations`` mode, pass the state from the encoding
        (``forward`` does); without it the output stays in the normalised units."""
        if not isinstance(values, torch.Tensor) or not isinstance(indices, torch.Tensor):
            raise TypeError("values and indices must be torch.Tensors")
        if values.shape != indices.shape:
            raise ValueError(f"values {tuple(values.shape)} and indices {tuple(indices.shape)} "
                             "must have the same shape")
        if indices.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"indices must be int64 or int32, got {indices.dtype}")
        if not values.is_floating_point():
            raise TypeError(f"values must be floating point, got {values.dtype}")
        lead = values.shape[:-1]
        k = values.shape[-1] if values.dim() else 1
        y = self._decode(values.reshape(-1, k).to(self.W_dec.dtype), indices.reshape(-1, k),
                         check_indices=True)
        return self._normalize_out(y, norm_state).reshape(*lead, self.d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d_in) -> reconstruction (..., d_in) in x's dtype (like SAELens's forward)."""
        x2 = self._flatten(x)
        lead = x.shape[:-1]
        xn, state = self._normalize_in(x2)
        values, indices = self._encode(xn)
        y = self._normalize_out(self._decode(values, indices), state)
        return y.reshape(*lead, self.d_in).to(x.dtype)

    # ------------------------------------------------------------------ files
    def save(self, path, **kwargs):
        """Write an SAELens directory (cfg.json + sae_weights.safetensors); see pyinterp.sae.io.save."""
        return io.save(self, path, **kwargs)

    @staticmethod
    def load(path, **kwargs) -> "SparseAutoencoder":
        """Read an SAELens directory; see pyinterp.sae.io.load."""
        return io.load(path, **kwargs)

    # Per-architecture file hooks of pyinterp.sae.io (see pyinterp/sae/registry.py). The base
    # files hold W_enc, W_dec, b_enc, b_dec and the config; these add what a class needs.
    @classmethod
    def saelens_tensors(cls, cfg_json: dict) -> tuple[str, ...]:
        """Names of the tensors a file of this architecture holds besides the four weights."""
        return ()

    def saelens_save(self, tensors: dict, cfg_json: dict, metadata: dict) -> None:
        """Add this architecture's tensors (float64, in place) and cfg.json fields."""

    def saelens_load(self, extra: dict) -> None:
        """Restore this architecture's state from the extra tensors of a loaded file."""

    # ------------------------------------------------------------------ training
    def _sparsity(self, code: A.Code, l1_scale: float) -> torch.Tensor:
        return self._sparsity_one(code, self.W_dec.norm(dim=1), l1_scale)

    def _aux(self, xn, x_hat, dead_mask) -> torch.Tensor:
        if not self.uses_auxk:
            return xn.new_zeros(())
        return _auxk_loss(self, xn, x_hat, dead_mask)

    @property
    def uses_dead_mask(self) -> bool:
        return self.uses_auxk or (self.activation == "jumprelu"
                                  and bool(self.cfg.pre_act_loss_coefficient))

    def _reconstruct(self, xn, code: A.Code):
        """(x_hat, {extra loss terms}) of a training code."""
        return self._decode(code.values, code.indices), {}

    def loss(self, x: torch.Tensor, *, dead_mask: Optional[torch.Tensor] = None,
             l1_scale: float = 1.0) -> SAELoss:
        """Training loss on x: (..., d_in), in normalised units.

        mse = mean over rows of ||x - x_hat||^2 (summed over d_in); plus the architecture's
        sparsity penalty (ReLU: lambda * l1_scale * sum_i f_i ||W_dec,i||; JumpReLU: its L0
        penalty) and, given ``dead_mask`` (d_sae,) bool, the AuxK loss (TopK/BatchTopK);
        Matryoshka dictionaries add their prefix losses (``extra``)."""
        xn, _ = self._normalize_in(self._flatten(x))
        code = self._code(xn)
        x_hat, extra = self._reconstruct(xn, code)
        mse = squared_error(xn, x_hat)
        sparsity = self._sparsity(code, l1_scale)
        aux = self._aux(xn, x_hat, dead_mask) if dead_mask is not None else mse.new_zeros(())
        total = mse + sparsity + aux
        for v in extra.values():
            total = total + v
        return SAELoss(total, mse, sparsity, aux, code.values.detach(), code.indices.detach(),
                       xn.detach(), x_hat.detach(), extra)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> tuple:
        """(values, indices, x (1, N, d_in), reconstruction (1, N, d_in)) in x's units."""
        x2 = self._flatten(x)
        xn, state = self._normalize_in(x2)
        values, indices = self._encode(xn)
        y = self._normalize_out(self._decode(values, indices), state)
        return values, indices, x2.unsqueeze(0), y.unsqueeze(0)

    def initialise(self, samples: tuple, normalize: bool, b_dec_init: Optional[str]) -> None:
        (sample,) = samples
        if normalize:
            self.set_input_scale(activation_scale(sample.float()))
        if b_dec_init:
            self.init_b_dec(sample, b_dec_init)
        if self.activation == "jumprelu" and self.cfg.init_l0:
            with torch.no_grad():
                xn, _ = self._normalize_in(self._flatten(sample, "sample"))
                init_thresholds_to_l0(self.threshold, xn, self.W_enc, self.b_enc,
                                      self._b_dec_in(), self.cfg.init_l0)
        self.data_initialised = True

    @torch.no_grad()
    def after_step(self, code: Optional[SAELoss] = None) -> None:
        """Called by the trainer after each optimiser step: renormalises a unit decoder,
        keeps JumpReLU thresholds >= 0, updates BatchTopK's inference threshold."""
        super().after_step(code)
        self.normalize_decoder()

    @torch.no_grad()
    def project_decoder_grad(self) -> None:
        """Unit decoder: remove the gradient component parallel to each decoder row."""
        if self.cfg.decoder_norm != "unit" or self.W_dec.grad is None:
            return
        w = self.W_dec
        g = self.W_dec.grad
        g.sub_((g * w).sum(1, keepdim=True) * w / w.pow(2).sum(1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        if self.cfg.decoder_norm == "unit":
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))


def _mark_data_initialised(module, incompatible_keys) -> None:
    module.data_initialised = True


def _auxk_loss(sae: SparseAutoencoder, xn, x_hat, dead_mask) -> torch.Tensor:
    """AuxK (Gao et al. 2024) of an SAE (see :func:`pyinterp.sae.activations.auxk_loss`)."""
    if dead_mask.shape != (sae.d_sae,) or dead_mask.dtype != torch.bool:
        raise ValueError(f"dead_mask must be a bool tensor of shape ({sae.d_sae},), got "
                         f"{dead_mask.dtype} {tuple(dead_mask.shape)}")
    bias = sae.b_enc + A.dead_bias(dead_mask, sae.b_enc.dtype)

    def encode_dead(k):
        return K.topk_encode(xn, sae.W_enc, bias, sae._b_dec_in(), k, **sae._kw())

    def decode(v, i):
        return K.sparse_decode(v, i, sae.W_dec, None, deterministic=sae.deterministic,
                               check_indices=False, **sae._kw())
    return A.auxk_loss(xn, x_hat, dead_mask, decode=decode, encode_dead=encode_dead,
                       k_aux=sae.cfg.effective_aux_k, coefficient=sae.cfg.aux_coefficient)


@register_sae_class
class ReLUSAE(SparseAutoencoder):
    """f = ReLU(W_enc^T (x - b_dec) + b_enc), x_hat = W_dec^T f + b_dec.

    decoder_norm="free" (default): L1 penalty weighted by decoder row norms (Scaling
    Monosemanticity); "unit": rows kept at norm 1 (Towards Monosemanticity).
    """

    architecture = "standard"
    # The active set's width is data-dependent: each encode costs one device->host sync.


@register_sae_class
class TopKSAE(SparseAutoencoder):
    """f = ReLU(TopK_k(W_enc^T (x - b_dec) + b_enc)) (Gao et al. 2024), with AuxK."""

    architecture = "topk"

    def saelens_save(self, tensors, cfg_json, metadata):
        k = int(self.cfg.k)
        cfg_json.update(k=k, rescale_acts_by_decoder_norm=False, activation_fn_kwargs={"k": k})



@register_sae_class
class BatchTopKSAE(SparseAutoencoder):
    """BatchTopK (Bussmann et al. 2024): in training the top k*N activations of the batch.

    At inference (``eval()``, or ``use_threshold=True``) a JumpReLU with one learned scalar
    threshold: an EMA of the smallest selected activation per training batch.
    """

    architecture = "batchtopk"

    @torch.no_grad()
    def update_threshold(self, values: torch.Tensor) -> None:
        """EMA of the smallest positive selected activation; no host sync."""
        A.update_batchtopk_threshold(self.threshold, self.threshold_updates, values,
                                     self.cfg.threshold_lr)

    def saelens_save(self, tensors, cfg_json, metadata):
        # As SAELens: saved as a JumpReLU with the learned (scalar) threshold for every latent.
        cfg_json["architecture"] = "jumprelu"
        tensors["threshold"] = torch.full((self.d_sae,), float(self.threshold), dtype=torch.float64)
        metadata["training_architecture"] = "batchtopk"
        metadata["training_architecture_details"] = {"k": self.cfg.k}

    @torch.no_grad()
    def saelens_load(self, extra):
        t = extra.get("threshold")
        self.threshold.fill_(float(t.reshape(-1)[0]) if t is not None else 0.0)
        self.threshold_updates.fill_(1)


@register_sae_class
class JumpReLUSAE(SparseAutoencoder):
    """JumpReLU (Rajamanoharan et al. 2024; Gemma Scope): f_i = pre_i [pre_i > theta_i].

    Inference (``eval()``): SAELens's ReLU(pre) [pre > theta]. Training (``train()``): the
    thresholds learn through the straight-through estimator (rectangle kernel of width
    ``cfg.bandwidth``) from the reconstruction and from the L0 penalty ``cfg.sparsity_loss``
    ("step", "quadratic" with ``target_l0``, "tanh"), coefficient ``cfg.l0_coefficient``. The
    encoder returns the active latents and the band of inactive ones within bandwidth/2 of
    their threshold, sparse (:func:`pyinterp.ops.jumprelu_select`); no dense pre-activation is
    kept. Thresholds are float32 parameters, kept >= 0 after each step.
    """

    architecture = "jumprelu"

    def _aux(self, xn, x_hat, dead_mask) -> torch.Tensor:
        """SAELens's ``pre_act_loss`` (Anthropic): coef * mean over rows of
        sum_{dead i} ReLU(theta_i - pre_i) ||W_dec,i||, on the dead latents' columns only (one
        host sync to list them, on the steps the trainer finds dead latents)."""
        coef = self.cfg.pre_act_loss_coefficient
        if not coef or dead_mask is None:
            return xn.new_zeros(())
        if dead_mask.shape != (self.d_sae,) or dead_mask.dtype != torch.bool:
            raise ValueError(f"dead_mask must be a bool tensor of shape ({self.d_sae},)")
        dead = torch.nonzero(dead_mask).squeeze(1)
        if dead.numel() == 0:
            return xn.new_zeros(())
        xc = xn - self.b_dec if self.cfg.apply_b_dec_to_input else xn
        pre = xc.float() @ self.W_enc[:, dead].float() + self.b_enc[dead].float()
        gap = (self.threshold[dead] - pre).relu() * self.W_dec[dead].norm(dim=1).float()
        return coef * gap.sum(-1).mean()

    @classmethod
    def saelens_tensors(cls, cfg_json):
        return ("threshold",)

    def saelens_save(self, tensors, cfg_json, metadata):
        tensors["threshold"] = self.threshold.detach().double()

    @torch.no_grad()
    def saelens_load(self, extra):
        self.threshold.copy_(extra["threshold"])


class _Matryoshka:
    """Nested prefix losses (Bussmann et al. 2025): sum_j ||x - x_hat(latents < m_j)||^2 over
    ``cfg.matryoshka_widths`` m_1 < ... < m_J = d_sae, all J reconstructions from one
    multi-output decode of the code (one decoder, J prefix ranges)."""

    def _reconstruct(self, xn, code: A.Code):
        widths = self.cfg.matryoshka_widths
        G = len(widths)
        outs = K.multi_decode(code.values, code.indices, self.W_dec.unsqueeze(0),
                              self.b_dec.unsqueeze(0).expand(G, -1),
                              decoder_map=shared_decoder_map(G), ranges=prefix_ranges(widths),
                              deterministic=self.deterministic, check_indices=False, **self._kw())
        extra = {}
        if G > 1:
            extra["prefix_mse"] = squared_error(xn.unsqueeze(0).expand(G - 1, -1, -1), outs[:-1])
        return outs[-1], extra


@register_sae_class
class MatryoshkaTopKSAE(_Matryoshka, TopKSAE):
    """Matryoshka TopK SAE: TopK latents, the loss summed over nested prefixes. Saved for
    SAELens as a TopK SAE (inference is the same)."""

    architecture = "matryoshka_topk"

    def saelens_save(self, tensors, cfg_json, metadata):
        super().saelens_save(tensors, cfg_json, metadata)
        cfg_json["architecture"] = "topk"
        metadata["training_architecture"] = "matryoshka_topk"
        metadata["training_architecture_details"] = {
            "k": self.cfg.k, "matryoshka_widths": self.cfg.matryoshka_widths}


@register_sae_class
class MatryoshkaBatchTopKSAE(_Matryoshka, BatchTopKSAE):
    """Matryoshka BatchTopK SAE (SAELens's matryoshka_batchtopk): BatchTopK latents in
    training, the nested prefix losses; a JumpReLU with one threshold at inference (saved so,
    as SAELens saves it)."""

    architecture = "matryoshka_batchtopk"

    def saelens_save(self, tensors, cfg_json, metadata):
        super().saelens_save(tensors, cfg_json, metadata)
        metadata["training_architecture"] = "matryoshka_batchtopk"
        metadata["training_architecture_details"] = {
            "k": self.cfg.k, "matryoshka_widths": self.cfg.matryoshka_widths}


def build(cfg: SAEConfig, **kwargs) -> SparseDictionary:
    """The registered module class for ``cfg.architecture``, constructed from ``cfg``."""
    return get_sae_class(cfg.architecture)(cfg=cfg, **kwargs)
