"""Shared helpers for the pyinterp.sae tests: tiny synthetic data, thread pinning."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread per test (importing this fixture into a test module applies it)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def sparse_data(n: int, d_in: int = 16, n_feat: int = 48, p: float = 0.08, seed: int = 0,
                offset: float = 0.3) -> torch.Tensor:
    """Rows that are sparse sums of fixed unit directions plus an offset (a known dictionary)."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n_feat, d_in, generator=g)
    feats = feats / feats.norm(dim=1, keepdim=True)
    code = (torch.rand(n, n_feat, generator=g) < p) * torch.rand(n, n_feat, generator=g)
    return code @ feats + offset


def batches(n_batches: int, batch: int = 64, d_in: int = 16, seed: int = 0):
    """A finite, deterministic list of activation batches."""
    return [sparse_data(batch, d_in, seed=seed * 1000 + i) for i in range(n_batches)]
