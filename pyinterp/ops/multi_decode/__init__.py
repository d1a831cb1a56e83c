"""Multi-output sparse decode (family ``multi_decode``): one sparse code through a stack of
decoders into G outputs in one pass, never a dense (N, d_sae) code nor an (N, k, d) tensor.

    out = multi_decode(values, indices, W_dec, b_dec)          # W_dec (G, d_sae, d_out)
    out[g]                                                     # (N, d_out), g < G

Two optional structures select which latents reach which output:

- ``ranges``: per output g a latent range [lo_g, hi_g) (Matryoshka prefixes: output g decodes
  only latents with index < m_g; an empty range gives b_dec[g]).
- ``decoder_map``: an (S, G) table. Latents are split into S equal source blocks of d_src
  latents (global index i belongs to block s = i // d_src, row i % d_src of a decoder);
  ``decoder_map[s][g]`` is the decoder of the stack W_dec (P, d_src, d_out) that maps block s
  to output g, or -1 when block s does not write to output g. Cross-layer transcoders:
  :func:`clt_decoder_map` (features of layer l decode to layers l..L-1 with their own
  decoders); Matryoshka: :func:`shared_decoder_map` (one decoder, G prefix outputs).
  Default: S = 1 and decoder g for output g (G = P).

Each in-range entry reads its decoder row once per output it reaches. Backward: grad values by
gathered dot products, grad W_dec by a per-latent segment sum (``deterministic=True``: no
float atomics on GPU backends, bit-reproducible; the cpu backend always is), grad b_dec.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence

import torch

from pyinterp.ops import _validate as check
from pyinterp.ops._dispatch import is_oracle, pick
from pyinterp.ops.multi_decode.function import MULTI_DECODE


def clt_decoder_map(n_layers: int) -> list[list[int]]:
    """The (L, L) decoder map of a cross-layer transcoder: source layer l writes to outputs
    j >= l through decoder ``offset(l) + (j - l)``, decoders packed source by source
    (P = L (L + 1) / 2; the decoders of source l are W_dec[offset(l):offset(l) + L - l])."""
    check.integer("n_layers", n_layers, low=1)
    table, p = [], 0
    for s in range(n_layers):
        row = []
        for g in range(n_layers):
            row.append(p + g - s if g >= s else -1)
        p += n_layers - s
        table.append(row)
    return table


def clt_decoder_offset(n_layers: int, layer: int) -> int:
    """Index in the packed CLT stack of the decoder layer -> layer (the first of that source)."""
    return sum(n_layers - s for s in range(layer))


def shared_decoder_map(n_outputs: int) -> list[list[int]]:
    """One source block, every output through decoder 0 (Matryoshka: pair with ``ranges``)."""
    check.integer("n_outputs", n_outputs, low=1)
    return [[0] * n_outputs]


def prefix_ranges(widths: Sequence[int]) -> list[tuple[int, int]]:
    """Matryoshka ranges [0, m_j) for the nested widths m_1 < ... < m_J."""
    return [(0, int(w)) for w in widths]


@functools.lru_cache(maxsize=64)
def _plan(dmap: tuple, ranges: Optional[tuple], P: int, d_src: int, device: str):
    """(decoder_map (S, G), lo (G,), hi (G,)) as int64 tensors on ``device``, validated."""
    S, G = len(dmap), len(dmap[0])
    owner = {}
    for s, row in enumerate(dmap):
        for g, p in enumerate(row):
            if p < -1 or p >= P:
                raise ValueError(f"decoder_map[{s}][{g}] = {p} must be -1 or a decoder index in "
                                 f"[0, {P}) (the first dim of W_dec)")
            if p >= 0 and owner.setdefault(p, s) != s:
                raise ValueError(f"decoder {p} is used by source blocks {owner[p]} and {s}; each "
                                 "decoder of the stack must belong to one source block")
    total = S * d_src
    if ranges is None:
        lo, hi = [0] * G, [total] * G
    else:
        if len(ranges) != G:
            raise ValueError(f"ranges must give one (lo, hi) per output ({G}), got {len(ranges)}")
        lo, hi = [], []
        for g, r in enumerate(ranges):
            a, b = r
            if not 0 <= a <= total or not 0 <= b <= total:
                raise ValueError(f"ranges[{g}] = {r} must lie in [0, {total}] (the latents)")
            lo.append(a)
            hi.append(b)
    dev = torch.device(device)
    return (torch.tensor(dmap, dtype=torch.int64, device=dev),
            torch.tensor(lo, dtype=torch.int64, device=dev),
            torch.tensor(hi, dtype=torch.int64, device=dev))


def _as_table(decoder_map, P: int) -> tuple:
    if decoder_map is None:
        return (tuple(range(P)),)
    if isinstance(decoder_map, torch.Tensor):
        decoder_map = decoder_map.tolist()
    try:
        table = tuple(tuple(int(p) for p in row) for row in decoder_map)
    except TypeError:
        raise TypeError("decoder_map must be an (S, G) table of ints (list of lists or a tensor)") from None
    if not table or not table[0] or any(len(r) != len(table[0]) for r in table):
        raise ValueError("decoder_map must be a non-empty (S, G) table with rows of equal length")
    return table


def _as_ranges(ranges) -> Optional[tuple]:
    if ranges is None:
        return None
    if isinstance(ranges, torch.Tensor):
        ranges = ranges.tolist()
    try:
        out = tuple((int(a), int(b)) for a, b in ranges)
    except (TypeError, ValueError):
        raise TypeError("ranges must be a sequence of (lo, hi) int pairs") from None
    return out


def multi_decode(values: torch.Tensor, indices: torch.Tensor, W_dec: torch.Tensor,
                 b_dec: Optional[torch.Tensor] = None, *, decoder_map=None, ranges=None,
                 deterministic: bool = False, check_indices: bool = True,
                 backend: Optional[str] = None) -> torch.Tensor:
    """Decode one sparse code into G outputs: returns (G, ..., d_out) in W_dec's dtype.

    values: (..., k) in W_dec's dtype; indices: same shape, int64 (int32 accepted), global
    latent indices in [0, S * d_src); W_dec: (P, d_src, d_out); b_dec: (G, d_out) or None;
    decoder_map: (S, G) ints or None (S = 1, G = P, decoder g for output g); ranges: G pairs
    (lo, hi) or None (every latent). See the module docstring for the exact sum.
    ``check_indices=False`` skips the range check (a device->host sync on GPU) for indices
    from this package's encoders.
    """
    check.sparse_code(values, indices)
    check.tensor("W_dec", W_dec, ndim=3)
    P, d_src, d_out = W_dec.shape
    if P < 1 or d_src < 1 or d_out < 1:
        raise ValueError(f"W_dec must have shape (P, d_src, d_out) with all >= 1, got "
                         f"{tuple(W_dec.shape)}")
    if not isinstance(deterministic, bool):
        raise TypeError(f"deterministic must be a bool, got {type(deterministic).__name__}")
    table = _as_table(decoder_map, P)
    dmap, lo, hi = _plan(table, _as_ranges(ranges), P, d_src, str(W_dec.device))
    S, G = dmap.shape
    if b_dec is not None:
        check.tensor("b_dec", b_dec, ndim=2)
        check.shape("b_dec", b_dec, (G, d_out), "(G outputs, d_out)")
    check.same_device(values=values, indices=indices, W_dec=W_dec, b_dec=b_dec)
    check.same_dtype(values=values, W_dec=W_dec, b_dec=b_dec)
    total = S * d_src
    if check_indices and indices.numel():
        bad = (indices < 0) | (indices >= total)
        if bool(bad.any()):
            raise ValueError(f"indices must lie in [0, {total}) (S={S} source blocks of "
                             f"{d_src} latents), found {int(indices[bad].flatten()[0])}")
    lead = values.shape[:-1]
    k = values.shape[-1]
    rows = math.prod(lead)  # explicit: reshape(-1, 0) is ambiguous for k = 0
    v2 = values.reshape(rows, k)
    i2 = indices.reshape(rows, k).to(torch.int64)
    name, impl = pick(MULTI_DECODE, v2, i2, W_dec, b_dec, backend=backend)
    if is_oracle(name):
        out = impl.multi_decode(v2, i2, W_dec, b_dec, dmap, lo, hi, deterministic)
    else:
        out = MULTI_DECODE.apply(name, impl, v2, i2.contiguous(), W_dec.contiguous(),
                                 None if b_dec is None else b_dec.contiguous(), dmap, lo, hi,
                                 deterministic)
    return out.reshape(G, *lead, d_out)
