"""Latent-parallel TopK dictionaries: W_enc / b_enc / W_dec split by latent across ranks,
for dictionaries too large for one device.

Rank r of W holds latents ``[start_r, stop_r)`` (``torch.tensor_split`` sizes): W_enc
(d_in, d_r), b_enc (d_r,), W_dec (d_r, d_in); b_dec and the input scale are replicated. Every
rank sees the same input batch. Forward:

1. each rank encodes its shard with :func:`pyinterp.ops.topk_encode` (the fast kernels), giving
   min(k, d_r) candidates per row (padded to k with -inf);
2. candidates (values, global indices) are all-gathered and the global top-k is taken by a
   stable sort over the rank-major concatenation, which orders equal values by global index,
   the ops' tie rule;
3. each rank decodes the selected latents it owns with :func:`pyinterp.ops.sparse_decode`; the
   partial reconstructions are summed with an all-reduce; b_dec is added once.

Backward (Megatron-style, for a loss every rank computes identically from the replicated
outputs): the all-reduce of the decode passes gradients through unchanged; the replicated
encoder inputs (x, b_dec) get the all-reduced sum of the ranks' encoder gradients; each shard's
parameters get exactly their slice of the single-process gradient. Candidates are merged by
their ReLU'd values, so among entries with value 0 (negative pre-activations) the chosen
indices may differ from a single-process encode; they contribute nothing to the output or the
gradients.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pyinterp import ops
from pyinterp._common import acc_dtype
from pyinterp.distributed import _group as G


def shard_range(d_sae: int, world: int, rank: int) -> tuple[int, int]:
    """[start, stop) of rank ``rank``'s latents (the first d_sae % world ranks get one more)."""
    base, extra = divmod(d_sae, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class _CopyToParallel(torch.autograd.Function):
    """Identity forward; all-reduce (sum) of the gradient backward."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return G.all_reduce_(grad.contiguous().clone(), group=ctx.group), None


class _ReduceFromParallel(torch.autograd.Function):
    """All-reduce (sum) forward; identity backward (the loss is replicated on every rank)."""

    @staticmethod
    def forward(ctx, x, group):
        return G.all_reduce_(x.contiguous().clone(), group=group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _gather_dim1(t: torch.Tensor, group) -> torch.Tensor:
    """(N, k) on every rank -> (N, world*k), rank-major."""
    w = G.world_size(group)
    if w == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(w)]
    dist.all_gather(parts, t.contiguous(), group=group)
    return torch.cat(parts, dim=1)


class LatentParallelTopKSAE(nn.Module):
    """A TopK dictionary whose latents are split across the ranks of ``group``.

    Construct it on every rank (same arguments and ``seed``: each rank keeps its slice of the
    same full initialisation), or with :meth:`from_dense`. ``encode``/``forward``/``loss``
    are collectives: every rank calls them with the same x (..., d_in).
    """

    def __init__(self, d_in: int, d_sae: int, k: int, *, group=None, device=None,
                 dtype=torch.float32, seed: Optional[int] = None, backend: Optional[str] = None,
                 apply_b_dec_to_input: bool = True):
        super().__init__()
        for name, v in (("d_in", d_in), ("d_sae", d_sae), ("k", k)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if k > d_sae:
            raise ValueError(f"k must be <= d_sae={d_sae}, got {k}")
        self.group = group
        self.world, self.rank = G.world_size(group), G.rank(group)
        if d_sae < self.world:
            raise ValueError(f"d_sae={d_sae} must be >= the number of ranks ({self.world})")
        self.d_in, self.d_sae, self.k = d_in, d_sae, k
        self.start, self.stop = shard_range(d_sae, self.world, self.rank)
        self.backend = backend
        self.apply_b_dec_to_input = apply_b_dec_to_input
        d_r = self.stop - self.start
        kw = dict(device=device, dtype=dtype)
        self.W_enc = nn.Parameter(torch.empty(d_in, d_r, **kw))
        self.b_enc = nn.Parameter(torch.zeros(d_r, **kw))
        self.W_dec = nn.Parameter(torch.empty(d_r, d_in, **kw))
        self.b_dec = nn.Parameter(torch.zeros(d_in, **kw))
        self.register_buffer("input_scale", torch.ones((), dtype=torch.float32, device=device))
        self.reset_parameters(seed)

    @torch.no_grad()
    def reset_parameters(self, seed: Optional[int] = None) -> None:
        """This rank's rows of the same full init as :class:`pyinterp.sae.TopKSAE` with a free
        decoder (random directions of norm 0.1, W_enc = W_dec^T, zero biases)."""
        from pyinterp.sae.init import random_directions

        gen = torch.Generator().manual_seed(0 if seed is None else seed)
        w = random_directions(self.d_sae, self.d_in, 0.1, generator=gen)[self.start:self.stop]
        self.W_dec.copy_(w)
        self.W_enc.copy_(w.T)
        self.b_enc.zero_()
        self.b_dec.zero_()

    @classmethod
    def from_dense(cls, sae, group=None) -> "LatentParallelTopKSAE":
        """This rank's shard of a :class:`pyinterp.sae.TopKSAE` (every rank passes the same)."""
        cfg = sae.cfg
        if cfg.architecture != "topk":
            raise ValueError(f"sae must be a TopK dictionary, got architecture {cfg.architecture!r}")
        if cfg.normalize_activations != "none":
            raise ValueError("latent-parallel dictionaries support normalize_activations='none' "
                             f"only, got {cfg.normalize_activations!r}")
        m = cls(cfg.d_in, cfg.d_sae, int(cfg.k), group=group, device=sae.W_enc.device,
                dtype=sae.W_enc.dtype, backend=sae.backend,
                apply_b_dec_to_input=cfg.apply_b_dec_to_input)
        with torch.no_grad():
            m.W_enc.copy_(sae.W_enc[:, m.start:m.stop])
            m.b_enc.copy_(sae.b_enc[m.start:m.stop])
            m.W_dec.copy_(sae.W_dec[m.start:m.stop])
            m.b_dec.copy_(sae.b_dec)
            m.input_scale.copy_(sae.input_scale)
        return m

    @torch.no_grad()
    def to_dense(self):
        """The whole dictionary as a :class:`pyinterp.sae.TopKSAE` on every rank (for saving
        in the SAELens layout from rank 0). Needs the memory of the full dictionary."""
        from pyinterp.sae import TopKSAE
        from pyinterp.sae.config import dtype_name

        full = TopKSAE(self.d_in, self.d_sae, k=self.k, device=self.W_enc.device,
                       dtype=dtype_name(self.W_enc.dtype),
                       apply_b_dec_to_input=self.apply_b_dec_to_input)
        rows = max(shard_range(self.d_sae, self.world, r)[1] - shard_range(self.d_sae, self.world, r)[0]
                   for r in range(self.world))
        pack = torch.zeros(rows, 2 * self.d_in + 1, dtype=self.W_enc.dtype, device=self.W_enc.device)
        n = self.stop - self.start
        pack[:n] = torch.cat([self.W_enc.T, self.W_dec, self.b_enc[:, None]], 1)
        parts = G.all_gather_cat(pack.unsqueeze(0), self.group)
        for r in range(self.world):
            s, e = shard_range(self.d_sae, self.world, r)
            p = parts[r, :e - s]
            full.W_enc[:, s:e] = p[:, :self.d_in].T
            full.W_dec[s:e] = p[:, self.d_in:2 * self.d_in]
            full.b_enc[s:e] = p[:, -1]
        full.b_dec.copy_(self.b_dec)
        full.input_scale.copy_(self.input_scale)
        return full

    # ------------------------------------------------------------------ the maps
    def _kw(self) -> dict:
        return {} if self.backend is None else {"backend": self.backend}

    def _flatten(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x must be a floating-point torch.Tensor, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        if x.dim() < 1 or x.shape[-1] != self.d_in:
            raise ValueError(f"x must have shape (..., d_in={self.d_in}), got {tuple(x.shape)}")
        return x.reshape(-1, self.d_in).to(self.W_enc.dtype) * self.input_scale.to(self.W_enc.dtype)

    def _encode_normalized(self, xn: torch.Tensor):
        g = self.group
        x_par = _CopyToParallel.apply(xn, g)
        b_dec = _CopyToParallel.apply(self.b_dec, g) if self.apply_b_dec_to_input else None
        k_local = min(self.k, self.stop - self.start)
        v_l, i_l = ops.topk_encode(x_par, self.W_enc, self.b_enc, b_dec, k_local, **self._kw())
        pad = self.k - k_local
        v_pad = F.pad(v_l, (0, pad))  # differentiable; padding never owns a selection
        cand_v = F.pad(v_l.detach(), (0, pad), value=float("-inf"))
        cand_i = F.pad(i_l + self.start, (0, pad), value=-1)
        all_v, all_i = _gather_dim1(cand_v, g), _gather_dim1(cand_i, g)
        order = torch.sort(all_v, dim=1, descending=True, stable=True).indices[:, :self.k]
        indices = torch.gather(all_i, 1, order)
        mine = (order // self.k) == self.rank
        local = torch.gather(v_pad, 1, order % self.k)
        own_values = torch.where(mine, local, torch.zeros((), dtype=local.dtype, device=local.device))
        values = _ReduceFromParallel.apply(own_values, g)
        return values, indices

    def _decode_normalized(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        own = (indices >= self.start) & (indices < self.stop)
        zero = torch.zeros((), dtype=values.dtype, device=values.device)
        local_v = torch.where(own, values, zero)
        local_i = torch.where(own, indices - self.start, torch.zeros_like(indices))
        part = ops.sparse_decode(local_v, local_i, self.W_dec, None, check_indices=False,
                                 **self._kw())
        return _ReduceFromParallel.apply(part, self.group) + self.b_dec

    def encode(self, x: torch.Tensor):
        """x: (..., d_in) -> (values, indices) each (..., k), global latent indices,
        identical on every rank; values differentiable."""
        lead = x.shape[:-1]
        v, i = self._encode_normalized(self._flatten(x))
        return v.reshape(*lead, self.k), i.reshape(*lead, self.k)

    def decode(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """values, indices: (..., k) with global indices -> (..., d_in) in input units."""
        if values.shape != indices.shape:
            raise ValueError(f"values {tuple(values.shape)} and indices {tuple(indices.shape)} "
                             "must have the same shape")
        lead = values.shape[:-1]
        k = values.shape[-1]
        y = self._decode_normalized(values.reshape(-1, k).to(self.W_dec.dtype),
                                    indices.reshape(-1, k).to(torch.int64))
        return (y / self.input_scale.to(y.dtype)).reshape(*lead, self.d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., d_in) -> reconstruction (..., d_in), like TopKSAE.forward."""
        xn = self._flatten(x)
        v, i = self._encode_normalized(xn)
        y = self._decode_normalized(v, i) / self.input_scale.to(xn.dtype)
        return y.reshape(x.shape).to(x.dtype)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """The TopK training loss (mean over rows of ||xn - x_hat||^2, normalised units);
        replicated on every rank."""
        xn = self._flatten(x)
        v, i = self._encode_normalized(xn)
        x_hat = self._decode_normalized(v, i)
        cd = acc_dtype(xn.dtype)
        return (x_hat.to(cd) - xn.to(cd)).pow(2).sum(-1).mean()

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Clip by the norm of the *whole* dictionary's gradient (shards all-reduced,
        replicated b_dec counted once); returns that norm."""
        sq = torch.zeros((), dtype=torch.float64, device=self.W_enc.device)
        for p in (self.W_enc, self.b_enc, self.W_dec):
            if p.grad is not None:
                sq += p.grad.double().pow(2).sum()
        G.all_reduce_(sq, group=self.group)
        if self.b_dec.grad is not None:
            sq += self.b_dec.grad.double().pow(2).sum()
        norm = sq.sqrt()
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for p in self.parameters():
            if p.grad is not None:
                p.grad.mul_(coef.to(p.grad.dtype))
        return norm
