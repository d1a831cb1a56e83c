"""Row-major operands for the sparse SAE kernels of the GPU backends (triton, cuda).

The gathers read whole rows of a (latent, feature) matrix, consecutive lanes taking consecutive
features, and the scatters write whole rows: coalesced when the feature dim is contiguous
(W_dec's rows), one 32-byte memory sector per element when it is not (W_enc's columns: the
encoder's grad x gathers them and grad W_enc scatters into them). On a GPU that is 8-16x the
bytes, and the scattered float atomics serialise on top. So the launchers

- gather from a row-major copy of W_enc^T when enough rows are read to pay for the copy
  (one read + one write of W_enc vs ~32 B per element read in place), and
- scatter into a row-major (d_sae, d) buffer, then write grad W_enc (d, d_sae) with one
  transposing copy (which replaces the accumulator -> weight dtype cast it already did).
"""
from __future__ import annotations

import torch

_SECTOR = 32  # bytes a scattered load or store moves


def row_major(W: torch.Tensor, stride_l: int, stride_d: int, rows_read: int):
    """(W', stride_l', stride_d') addressing the same (latent, feature) matrix as ``W`` with
    (stride_l, stride_d), with the feature dim contiguous when that is worth a copy."""
    if stride_d == 1:
        return W, stride_l, stride_d
    M = W if (stride_l, stride_d) == tuple(W.stride()) else W.t()
    n_lat, d = M.shape
    if rows_read * d * _SECTOR < 2 * M.numel() * M.element_size():
        return W, stride_l, stride_d  # a few rows: cheaper to read them scattered in place
    M = M.contiguous()
    return M, M.stride(0), M.stride(1)


def transposed(rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """rows (d_sae, d) -> a contiguous (d, d_sae) tensor of ``dtype`` in one pass."""
    out = torch.empty(rows.shape[1], rows.shape[0], dtype=dtype, device=rows.device)
    return out.copy_(rows.t())
