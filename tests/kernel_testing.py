"""Helpers for testing every op on every kernel backend against the oracle (Liger-Kernel style)."""
from __future__ import annotations

import pytest
import torch

import pyinterp
from pyinterp import _backend
from pyinterp.backends import registry

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Tolerances against the float32-accumulating reference. bf16 is loose: the Triton
# interpreter truncates fp32->bf16 casts instead of rounding them.
TOLERANCES = {
    torch.float64: dict(atol=1e-10, rtol=1e-8),
    torch.float32: dict(atol=1e-5, rtol=1e-4),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}
GRAD_TOLERANCES = {
    torch.float64: dict(atol=1e-9, rtol=1e-7),
    torch.float32: dict(atol=1e-4, rtol=1e-3),
    torch.float16: dict(atol=1e-2, rtol=1e-2),
    torch.bfloat16: dict(atol=6e-2, rtol=6e-2),
}


def device_for(backend: str) -> torch.device:
    """CUDA for a backend that runs only there (when a GPU is present), else CPU (triton then
    runs interpreted)."""
    b = registry.get(backend)
    if torch.cuda.is_available() and b.runs_on("cuda") and not b.runs_on("cpu"):
        return torch.device("cuda")
    return torch.device("cpu")


def require(backend: str) -> torch.device:
    """Skip (saying why) when ``backend`` cannot run here; return the device to test on."""
    ok, why = _backend.availability(backend)
    if not ok:
        pytest.skip(f"{backend} backend unavailable here: {why}")
    device = device_for(backend)
    ok, why = _backend.device_ok(backend, device.type)
    if not ok:
        pytest.skip(f"{backend} backend cannot run {device.type} tensors here: {why}")
    return device


# Every kernel backend (each test compares it with the oracle). The oracle itself is checked
# against brute force in tests/test_reference.py, never against itself.
BACKEND_PARAMS = [pytest.param(b, id=b) for b in pyinterp.BACKENDS
                  if not registry.get(b).oracle]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype=None, grad: bool = False, **kw):
    dtype = dtype or expected.dtype
    tol = dict((GRAD_TOLERANCES if grad else TOLERANCES)[dtype])
    tol.update(kw)
    torch.testing.assert_close(actual.detach().cpu().to(torch.float64),
                               expected.detach().cpu().to(torch.float64), equal_nan=True, **tol)
