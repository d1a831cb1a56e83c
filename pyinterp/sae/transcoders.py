"""Transcoders (Dunefsky et al. 2024): read one hook point, predict another.

    tc = Transcoder(d_in=512, d_sae=16384, activation="topk", k=32,
                    hook_name="blocks.3.ln2.hook_normalized", hook_name_out="blocks.3.hook_mlp_out")
    values, indices = tc.encode(x)          # x: (..., d_in) at hook_name
    y_hat = tc(x)                           # (..., d_out): decode(values, indices) + skip(x)
    res = tc.loss(x, y)                     # y: (..., d_out) at hook_name_out

f = act(x @ W_enc + b_enc) (no input centring: b_dec lives in the output space), y_hat =
f @ W_dec + b_dec (+ W_skip x with ``skip=True``: the skip transcoder of Paulo et al. 2025 /
Gemma Scope 2's affine connection). ``activation``: relu (L1 weighted by decoder norms), topk,
batchtopk, jumprelu (trained thresholds, L0 penalty). Parameters in SAELens's layout: W_enc
(d_in, d_sae), W_dec (d_sae, d_out), b_enc (d_sae,), b_dec (d_out,), W_skip (d_out, d_in).
Inputs and targets are scaled by fixed scalars (E||s x||^2 = d_in, E||s y||^2 = d_out) set from
the first batches; ``forward``/``decode`` return the target's units.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from pyinterp.sae import _kernels as K
from pyinterp.sae import activations as A
from pyinterp.sae.config import SAEConfig
from pyinterp.sae.dictionary import SAELoss, SparseDictionary, rows, squared_error
from pyinterp.sae.init import activation_scale, geometric_median, random_directions
from pyinterp.sae.jumprelu_init import init_thresholds_to_l0
from pyinterp.sae.registry import register_sae_class


def _fill_defaults(config: dict) -> dict:
    config = dict(config)
    config.setdefault("activation", "topk" if config.get("k") is not None else "relu")
    config.setdefault("apply_b_dec_to_input", False)
    return config


@register_sae_class
class Transcoder(SparseDictionary):
    """One hook point in (``hook_name``), another out (``hook_name_out``)."""

    architecture = "transcoder"

    def __init__(self, d_in: Optional[int] = None, d_sae: Optional[int] = None, *,
                 cfg: Optional[SAEConfig] = None, device=None, seed: Optional[int] = None,
                 backend: Optional[str] = None, **config):
        if cfg is None:
            cfg = SAEConfig(architecture=self.architecture, d_in=d_in, d_sae=d_sae,
                            **_fill_defaults(config))
        elif d_in is not None or d_sae is not None or config:
            raise TypeError("pass either cfg or the config fields, not both")
        if cfg.apply_b_dec_to_input:
            raise ValueError("transcoders do not centre their input (b_dec is in the output "
                             "space): set apply_b_dec_to_input=False")
        if cfg.normalize_activations != "none":
            raise ValueError(f"transcoders support normalize_activations='none' only (a fixed "
                             f"scale is learned), got {cfg.normalize_activations!r}")
        super().__init__(cfg, backend)
        kw = dict(dtype=cfg.torch_dtype, device=device)
        d_out = cfg.output_width
        self.W_enc = nn.Parameter(torch.empty(cfg.d_in, cfg.d_sae, **kw))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, **kw))
        self.W_dec = nn.Parameter(torch.empty(cfg.d_sae, d_out, **kw))
        self.b_dec = nn.Parameter(torch.zeros(d_out, **kw))
        self.W_skip = nn.Parameter(torch.zeros(d_out, cfg.d_in, **kw)) if cfg.skip else None
        self.register_buffer("input_scale", torch.ones((), dtype=torch.float32, device=device))
        self.register_buffer("output_scale", torch.ones((), dtype=torch.float32, device=device))
        self._init_activation_state((cfg.d_sae,), device)
        self.reset_parameters(seed)

    @property
    def d_out(self) -> int:
        return self.cfg.output_width

    @property
    def hook_name_out(self) -> Optional[str]:
        return self.cfg.hook_name_out

    def target_hooks(self) -> list:
        return [self.cfg.hook_name_out]

    def input_widths(self) -> list:
        return [self.d_in, self.d_out]

    def batch_inputs(self, batch, name: str) -> tuple:
        if isinstance(batch, dict) and (self.hook_name is None or self.hook_name_out is None):
            raise ValueError(f"transcoder {name!r} needs hook_name and hook_name_out to read a "
                             "dict batch")
        return super().batch_inputs(batch, name)

    def extra_repr(self) -> str:
        k = f", k={self.cfg.k}" if self.cfg.k is not None else ""
        return (f"d_in={self.d_in}, d_sae={self.d_sae}, d_out={self.d_out}, "
                f"activation={self.activation!r}{k}, skip={self.cfg.skip}, "
                f"hook_name={self.hook_name!r} -> {self.hook_name_out!r}")

    @torch.no_grad()
    def reset_parameters(self, seed: Optional[int] = None) -> None:
        """Encoder columns and decoder rows: random directions of norm ``init_decoder_norm``
        (default 0.1); zero biases and skip."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        norm = self.cfg.init_decoder_norm or 0.1
        self.W_enc.copy_(random_directions(self.d_sae, self.d_in, norm, generator=gen).T)
        self.W_dec.copy_(random_directions(self.d_sae, self.d_out, norm, generator=gen))
        self.b_enc.zero_()
        self.b_dec.zero_()
        if self.W_skip is not None:
            self.W_skip.zero_()

    # ------------------------------------------------------------------ the maps
    def _scaled(self, x, y=None):
        xn = rows(x, self.d_in, "x", self.W_enc.device).to(self.W_enc.dtype)
        xn = xn * self.input_scale.to(xn.dtype)
        if y is None:
            return xn
        yn = rows(y, self.d_out, "y", self.W_enc.device).to(self.W_enc.dtype)
        if yn.shape[0] != xn.shape[0]:
            raise ValueError(f"x and y must have the same rows, got {xn.shape[0]} and {yn.shape[0]}")
        return xn, yn * self.output_scale.to(yn.dtype)

    def _code(self, xn) -> A.Code:
        return self._encode_one(xn, self.W_enc, self.b_enc, None)

    def _decode_n(self, values, indices, check_indices: bool = False):
        return K.sparse_decode(values, indices, self.W_dec, self.b_dec,
                               deterministic=self.deterministic, check_indices=check_indices,
                               **self._kw())

    def _skip_n(self, xn):
        return xn @ self.W_skip.T if self.W_skip is not None else 0

    def encode(self, x: torch.Tensor):
        """x: (..., d_in) -> (values, indices), each (..., k)."""
        code = self._code(self._scaled(x))
        lead = x.shape[:-1]
        return code.values.reshape(*lead, -1), code.indices.reshape(*lead, -1)

    def decode(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """The dictionary part of the output, f @ W_dec + b_dec: (..., d_out) in target units
        (without the skip term; see :meth:`skip`)."""
        lead = values.shape[:-1]
        k = values.shape[-1]
        y = self._decode_n(values.reshape(-1, k).to(self.W_dec.dtype), indices.reshape(-1, k),
                           check_indices=True)
        return (y / self.output_scale.to(y.dtype)).reshape(*lead, self.d_out)

    def skip(self, x: torch.Tensor) -> torch.Tensor:
        """The affine skip term W_skip x in target units (zeros without ``skip``)."""
        xn = self._scaled(x)
        s = self._skip_n(xn)
        if not isinstance(s, torch.Tensor):
            s = xn.new_zeros(xn.shape[0], self.d_out)
        return (s / self.output_scale.to(s.dtype)).reshape(*x.shape[:-1], self.d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d_in) -> prediction (..., d_out) in the target's units and x's dtype."""
        xn = self._scaled(x)
        code = self._code(xn)
        y = self._decode_n(code.values, code.indices) + self._skip_n(xn)
        y = y / self.output_scale.to(y.dtype)
        return y.reshape(*x.shape[:-1], self.d_out).to(x.dtype)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor) -> tuple:
        """(values, indices, y (1, N, d_out), prediction (1, N, d_out)) in y's units."""
        xn = self._scaled(x)
        code = self._code(xn)
        pred = (self._decode_n(code.values, code.indices) + self._skip_n(xn)) / self.output_scale
        target = rows(y, self.d_out, "y", self.W_enc.device)
        return code.values, code.indices, target.unsqueeze(0), pred.to(target.dtype).unsqueeze(0)

    def write_files(self, path, feature_density=None):
        """SAELens's transcoder layout (:func:`pyinterp.sae.io_dictionaries.save_transcoder`)."""
        from pyinterp.sae.io_dictionaries import save_transcoder

        return save_transcoder(self, path, feature_density=feature_density)

    # ------------------------------------------------------------------ training
    def decoder_norms(self) -> torch.Tensor:
        return self.W_dec.norm(dim=1)

    def loss(self, x: torch.Tensor, y: torch.Tensor, *, dead_mask: Optional[torch.Tensor] = None,
             l1_scale: float = 1.0) -> SAELoss:
        """Training loss in normalised units: mean over rows of ||y - y_hat||^2, the
        activation's sparsity penalty, AuxK (TopK / BatchTopK, given ``dead_mask``)."""
        xn, yn = self._scaled(x, y)
        code = self._code(xn)
        y_hat = self._decode_n(code.values, code.indices) + self._skip_n(xn)
        mse = squared_error(yn, y_hat)
        sparsity = self._sparsity_one(code, self.decoder_norms(), l1_scale)
        aux = mse.new_zeros(())
        if dead_mask is not None and self.uses_auxk:
            aux = self._auxk(xn, yn, y_hat, dead_mask)
        return SAELoss(mse + sparsity + aux, mse, sparsity, aux, code.values.detach(),
                       code.indices.detach(), yn.detach(), y_hat.detach())

    def _auxk(self, xn, yn, y_hat, dead_mask):
        if dead_mask.shape != (self.d_sae,) or dead_mask.dtype != torch.bool:
            raise ValueError(f"dead_mask must be a bool tensor of shape ({self.d_sae},)")
        bias = self.b_enc + A.dead_bias(dead_mask, self.b_enc.dtype)
        return A.auxk_loss(
            yn, y_hat, dead_mask, k_aux=self.cfg.effective_aux_k,
            coefficient=self.cfg.aux_coefficient,
            encode_dead=lambda k: K.topk_encode(xn, self.W_enc, bias, None, k, **self._kw()),
            decode=lambda v, i: K.sparse_decode(v, i, self.W_dec, None, check_indices=False,
                                                deterministic=self.deterministic, **self._kw()))

    @torch.no_grad()
    def initialise(self, samples: tuple, normalize: bool, b_dec_init: Optional[str]) -> None:
        """Scales from the sample (input and target separately), b_dec from the targets
        (geometric median or mean), JumpReLU thresholds to ``cfg.init_l0`` when set."""
        x, y = samples
        if normalize:
            self.input_scale.fill_(activation_scale(x.float()))
            self.output_scale.fill_(activation_scale(y.float()))
        xn, yn = self._scaled(x, y)
        if b_dec_init:
            centre = geometric_median(yn) if b_dec_init == "geometric_median" else yn.mean(0)
            self.b_dec.copy_(centre.to(self.b_dec.dtype))
        if self.activation == "jumprelu" and self.cfg.init_l0:
            init_thresholds_to_l0(self.threshold, xn, self.W_enc, self.b_enc, None,
                                  self.cfg.init_l0)

