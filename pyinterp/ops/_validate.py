"""Argument checks at the op boundary. Kernels assume what these functions guarantee.

Every error names the argument and says what was expected, so a user can fix the call.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
INDEX_DTYPES = (torch.int64, torch.int32)


def _dtype_names(dtypes: Iterable[torch.dtype]) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def tensor(
    name: str,
    x,
    *,
    ndim: Optional[int] = None,
    min_ndim: Optional[int] = None,
    dtypes: Sequence[torch.dtype] = FLOAT_DTYPES,
    nonempty_last: bool = False,
) -> torch.Tensor:
    """Check that ``x`` is a tensor of an accepted dtype and rank; return it."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in ({_dtype_names(dtypes)}), got {x.dtype}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(x.shape)}")
    if min_ndim is not None and x.dim() < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dims, got shape {tuple(x.shape)}")
    if nonempty_last and (x.dim() == 0 or x.shape[-1] == 0):
        raise ValueError(f"{name} must have a non-empty last dimension, got shape {tuple(x.shape)}")
    return x


def sparse_code(values, indices) -> None:
    """A sparse code: float ``values`` (..., k) and integer ``indices`` of the same shape."""
    tensor("values", values, min_ndim=1)
    tensor("indices", indices, dtypes=INDEX_DTYPES)
    if tuple(indices.shape) != tuple(values.shape):
        raise ValueError(f"indices must have the shape of values {tuple(values.shape)}, "
                         f"got {tuple(indices.shape)}")


def shape(name: str, x: torch.Tensor, expected: Sequence[int], what: str = "") -> None:
    if tuple(x.shape) != tuple(expected):
        extra = f" ({what})" if what else ""
        raise ValueError(f"{name} must have shape {tuple(expected)}{extra}, got {tuple(x.shape)}")


def same_device(**tensors: Optional[torch.Tensor]) -> torch.device:
    devices = {k: t.device for k, t in tensors.items() if isinstance(t, torch.Tensor)}
    unique = set(devices.values())
    if len(unique) > 1:
        listing = ", ".join(f"{k} on {d}" for k, d in devices.items())
        raise ValueError(f"all tensors must be on the same device, got {listing}")
    return unique.pop() if unique else torch.device("cpu")


def same_dtype(**tensors: Optional[torch.Tensor]) -> None:
    dtypes = {k: t.dtype for k, t in tensors.items() if isinstance(t, torch.Tensor)}
    if len(set(dtypes.values())) > 1:
        listing = ", ".join(f"{k} is {d}" for k, d in dtypes.items())
        raise TypeError(f"tensors must share one dtype, got {listing}")


def positive_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def integer(name: str, value, *, low: Optional[int] = None, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


def choice(name: str, value, options: Sequence) -> None:
    if value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")
