"""The base every dictionary kind shares: its configuration, the trainer protocol, the
activation state (JumpReLU thresholds, the BatchTopK inference threshold) and the loss record.

The trainer talks to any dictionary through five methods: ``needed_hooks()`` (which hook
points a batch must hold), ``batch_inputs(batch, name)`` (the tensors ``loss`` takes),
``initialise(samples, normalize, b_dec_init)``, ``loss(*inputs, dead_mask, l1_scale)`` and
``after_step(loss)``; ``n_latents`` sizes its dead-latent counters.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from pyinterp.sae import activations as A
from pyinterp.sae.config import SAEConfig


@dataclass
class SAELoss:
    """One training loss evaluation. Tensors ``total``..``aux`` are scalars (on device).

    values, indices: the code (N, k), detached (global latent indices for a CLT); x, x_hat:
    normalised target and reconstruction, detached: (N, d), or (G, N, d) for dictionaries
    with G outputs (crosscoders, CLTs); None in the training steps ``SAETrainer.run`` does
    not log (dropped before backward, which can then free them). ``extra``: further named
    loss terms in ``total`` (e.g. the Matryoshka prefix losses).
    """

    total: torch.Tensor
    mse: torch.Tensor
    sparsity: torch.Tensor
    aux: torch.Tensor
    values: torch.Tensor
    indices: torch.Tensor
    x: Optional[torch.Tensor]
    x_hat: Optional[torch.Tensor]
    extra: dict = field(default_factory=dict)

    def components(self) -> dict[str, float]:
        """The loss terms as Python floats (one host sync)."""
        names = ["loss", "mse", "sparsity", "aux"] + list(self.extra)
        t = torch.stack([v.detach().float() for v in
                         (self.total, self.mse, self.sparsity, self.aux, *self.extra.values())])
        return dict(zip(names, t.tolist()))


def rows(x, d: int, name: str, device) -> torch.Tensor:
    """x: (..., d) floating tensor on ``device`` -> (N, d), or an error naming ``name``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != d:
        raise ValueError(f"{name} must have shape (..., {d}), got {tuple(x.shape)}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device} but the dictionary is on {device}")
    return x.reshape(-1, d)


def squared_error(target: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ||target - recon||^2 (summed over the last dim and over outputs for
    (G, N, d) tensors), accumulated in >= float32."""
    cd = torch.float64 if target.dtype == torch.float64 else torch.float32
    if recon.dtype == cd and target.dtype == cd:
        # one elementwise temporary (a difference and its square would be two at once), and
        # backward keeps only the two tensors the caller holds anyway
        err = F.mse_loss(recon, target, reduction="none").sum(-1)
    else:  # keep one upcast difference, not two upcast copies
        err = (recon.to(cd) - target.to(cd)).pow(2).sum(-1)
    if err.dim() == 2:  # (G, N): sum over outputs
        err = err.sum(0)
    return err.mean() if err.numel() else err.sum()


class SparseDictionary(nn.Module):
    """Base of every dictionary (SAEs, transcoders, crosscoders, CLTs)."""

    architecture: str = ""

    def __init__(self, cfg: SAEConfig, backend: Optional[str] = None):
        super().__init__()
        if cfg.architecture != self.architecture:
            raise ValueError(f"{type(self).__name__} needs architecture {self.architecture!r}, "
                             f"got cfg.architecture={cfg.architecture!r}")
        self.cfg = cfg
        self.backend = backend
        # Deterministic W_dec gradient (no float atomics); the trainer can switch it on.
        self.deterministic = False

    # ------------------------------------------------------------------ sizes and hooks
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def n_latents(self) -> int:
        """Latents in total (dead-latent counters, densities, global code indices)."""
        return self.cfg.d_sae

    @property
    def hook_name(self) -> Optional[str]:
        return self.cfg.hook_name

    @property
    def activation(self) -> str:
        return self.cfg.latent_activation

    @property
    def uses_auxk(self) -> bool:
        return self.activation in ("topk", "batchtopk")

    @property
    def uses_dead_mask(self) -> bool:
        """Whether :meth:`loss` does something with ``dead_mask`` (AuxK; JumpReLU SAEs'
        pre-activation loss): the trainer passes it only then."""
        return self.uses_auxk

    def input_hooks(self) -> list:
        """Hook points read by the encoder(s), in order."""
        return [self.cfg.hook_name]

    def target_hooks(self) -> list:
        """Hook points reconstructed (empty: the inputs themselves)."""
        return []

    def input_widths(self) -> list:
        """Width of each tensor :meth:`batch_inputs` gives (same order)."""
        return [self.cfg.d_in]

    def needed_hooks(self) -> list[str]:
        """Every hook point a training batch must hold for this dictionary."""
        return [h for h in self.input_hooks() + self.target_hooks() if h is not None]

    def batch_inputs(self, batch, name: str) -> tuple:
        """The tensors :meth:`loss` takes, read from a training batch: a tensor (a one-input
        dictionary), a tuple of the tensors themselves, or a dict hook name -> (N, d) (a
        dictionary without hook names reads the key ``name``)."""
        hooks = self.input_hooks() + self.target_hooks()
        if isinstance(batch, (tuple, list)):  # the tensors themselves, in input_widths order
            if len(batch) != len(hooks):
                raise ValueError(f"a tuple batch for dictionary {name!r} must hold {len(hooks)} "
                                 f"tensors (inputs, then targets), got {len(batch)}")
            return tuple(batch)
        if isinstance(batch, torch.Tensor):
            if len(hooks) != 1:
                raise TypeError(f"dictionary {name!r} reads {len(hooks)} hook points; a batch for "
                                "it must be a dict hook name -> activations")
            return (batch,)
        if not isinstance(batch, dict):
            raise TypeError(f"a batch must be a tensor or a dict of tensors, got {type(batch).__name__}")
        out = []
        for h in hooks:
            key = h if h is not None else name
            if key not in batch:
                raise KeyError(f"the batch has no activations for dictionary {name!r} (hook "
                               f"{key!r}); it has {sorted(batch)}")
            out.append(batch[key])
        return tuple(out)

    # ------------------------------------------------------------------ activation state
    def _init_activation_state(self, shape: tuple, device, encoders: tuple = ()) -> None:
        """JumpReLU: a float32 threshold parameter of ``shape`` (Adam's ~lr steps on an
        O(0.01) threshold round away in bf16, as SAELens notes); BatchTopK: the inference
        threshold, one per encoder (``encoders``: () for one encoder, (L,) for a CLT)."""
        act = self.activation
        if act == "jumprelu":
            self.threshold = nn.Parameter(torch.full(shape, float(self.cfg.init_threshold),
                                                     dtype=torch.float32, device=device))
        elif act == "batchtopk":
            self.register_buffer("threshold", torch.zeros(encoders, dtype=torch.float32,
                                                          device=device))
            self.register_buffer("threshold_updates", torch.zeros(encoders, dtype=torch.int64,
                                                                  device=device))
        self.use_threshold: Optional[bool] = None

    def _training_code(self) -> bool:
        """BatchTopK / JumpReLU: the training rule in train mode (``use_threshold`` forces)."""
        return self.training if self.use_threshold is None else not self.use_threshold

    def _kw(self) -> dict:
        return {} if self.backend is None else {"backend": self.backend}

    def _encode_one(self, xn, W_enc, b_enc, b_center, threshold=None) -> A.Code:
        thr = self.threshold if threshold is None and hasattr(self, "threshold") else threshold
        return A.encode(self.activation, xn, W_enc, b_enc, b_center, k=self.cfg.k,
                        threshold=thr, cfg=self.cfg, train=self._training_code(), kw=self._kw())

    def _sparsity_one(self, code: A.Code, decoder_norms, scale: float, threshold=None):
        thr = self.threshold if threshold is None and hasattr(self, "threshold") else threshold
        return A.sparsity(self.activation, code, decoder_norms, self.cfg, scale, thr)

    # ------------------------------------------------------------------ files
    def save(self, path, **kwargs):
        """Write the dictionary to directory ``path`` (SAELens's layout where SAELens has one;
        see :func:`pyinterp.sae.io.save` and docs/dictionaries.md)."""
        from pyinterp.sae import io

        return io.save(self, path, **kwargs)

    @staticmethod
    def load(path, **kwargs) -> "SparseDictionary":
        """Read any dictionary directory pyinterp understands; see :func:`pyinterp.sae.io.load`."""
        from pyinterp.sae import io

        return io.load(path, **kwargs)

    # ------------------------------------------------------------------ training hooks
    @torch.no_grad()
    def after_step(self, res: Optional[SAELoss] = None) -> None:
        """Called by the trainer after each optimiser step."""
        if self.activation == "jumprelu":
            # Keep thresholds >= 0 (below 0 the gate would pass negative pre-activations); a
            # projection on the data, as SAELens, so a threshold at 0 keeps its gradient.
            self.threshold.clamp_(min=0.0)
        elif self.activation == "batchtopk" and res is not None:
            A.update_batchtopk_threshold(self.threshold, self.threshold_updates, res.values,
                                         self.cfg.threshold_lr)

    def project_decoder_grad(self) -> None:
        """Unit-norm decoders only (SAEs with decoder_norm="unit"); a no-op otherwise."""

    def checkpoint_layout(self) -> Optional[list]:
        """How trainer checkpoints store this module's optimizer state: None (one entry per
        parameter, in ``parameters()`` order), or per stored entry the indices (in
        ``parameters()`` order) of the parameters it holds, several stacked on a new dim 0
        (a crosscoder's per-layer decoders are one ``W_dec`` there, as in its state dict)."""
        return None

    @property
    def layer_size(self) -> int:
        """Latents per encoder (global latent i belongs to encoder i // layer_size)."""
        return self.n_latents

    def reconstruct(self, *inputs) -> tuple:
        """Evaluation of one batch (the tensors :meth:`batch_inputs` gives), no gradient:
        ``(values, indices, target, recon)``; target and recon (G, N, d) in the targets' own
        units (G = 1 for single-output dictionaries)."""
        raise NotImplementedError

    def initialise(self, samples: tuple, normalize: bool, b_dec_init: Optional[str]) -> None:
        """Fixed activation scales and the decoder bias from a data sample (the tensors
        :meth:`batch_inputs` gives, concatenated over the initialisation batches)."""
        raise NotImplementedError

    def loss(self, *inputs, dead_mask: Optional[torch.Tensor] = None,
             l1_scale: float = 1.0) -> SAELoss:
        raise NotImplementedError
