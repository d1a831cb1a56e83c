"""Synthetic data sets for the papers' experiments (all deterministic in ``seed``).

- :func:`repeated_tokens`: random token sequences repeated (induction heads, Olsson et al.),
  starting at a random offset so a model cannot solve the copy with positional attention.
- :func:`sparse_features` / :func:`importance`: toy-model inputs (Elhage et al. 2022):
  x_i = 0 with probability S, else U[0, 1].
- :func:`finite_dataset`: a fixed set of T sparse vectors rescaled to unit norm (Henighan et
  al. 2023, double descent) and a fresh test set from the same distribution.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


@dataclass
class RepeatedTokens:
    """tokens: (B, T) int64; ``first``/``second``: (B,) index where each copy starts;
    ``period``: the length of the repeated segment. Positions ``second + j`` (j >= 1)
    are predictable by induction from position ``first + j``."""

    tokens: torch.Tensor
    first: torch.Tensor
    second: torch.Tensor
    period: int

    def induction_mask(self) -> torch.Tensor:
        """(B, T) bool: query positions inside the second copy after its first token."""
        B, T = self.tokens.shape
        pos = torch.arange(T)[None]
        s = self.second[:, None]
        return (pos > s) & (pos < s + self.period)


def repeated_tokens(batch: int, seq_len: int, d_vocab: int, seed: int = 0,
                    n_ctx: Optional[int] = None, bos_token: Optional[int] = None,
                    random_offset: bool = True, low: int = 0) -> RepeatedTokens:
    """Sequences ``[bos] noise... r r noise...`` with r a random segment of ``seq_len`` tokens.

    The total length is ``n_ctx`` (default ``2 * seq_len`` + 1 with a bos token). With
    ``random_offset`` the first copy starts at a random position per row (filled with random
    tokens around it), so the distance between copies is fixed but their position is not.
    Tokens are drawn from [low, d_vocab).
    """
    extra = 1 if bos_token is not None else 0
    total = n_ctx if n_ctx is not None else 2 * seq_len + extra
    if seq_len < 1 or 2 * seq_len + extra > total:
        raise ValueError(f"2 * seq_len (+1 for bos) = {2 * seq_len + extra} must fit in n_ctx={total}")
    if d_vocab - low < 2:
        raise ValueError(f"need at least 2 token ids in [low, d_vocab), got [{low}, {d_vocab})")
    g = _gen(seed)
    tokens = torch.randint(low, d_vocab, (batch, total), generator=g)
    seg = torch.randint(low, d_vocab, (batch, seq_len), generator=g)
    slack = total - 2 * seq_len - extra
    if random_offset and slack > 0:
        off = torch.randint(0, slack + 1, (batch,), generator=g)
    else:
        off = torch.zeros(batch, dtype=torch.long)
    first = off + extra
    idx = torch.arange(seq_len)[None]
    rows = torch.arange(batch)[:, None]
    tokens[rows, first[:, None] + idx] = seg
    tokens[rows, first[:, None] + seq_len + idx] = seg
    if bos_token is not None:
        tokens[:, 0] = bos_token
    return RepeatedTokens(tokens=tokens, first=first, second=first + seq_len, period=seq_len)


def periodic_tokens(batch: int, n_ctx: int, min_period: int, max_period: int, d_vocab: int,
                    seed: int = 0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(batch, n_ctx) int64 rows, each a random segment tiled over the whole row.

    Each row draws its period uniformly from [min_period, max_period] and starts at a random
    phase of its segment; tokens are drawn from [0, d_vocab). Every token after the first period
    is predicted by prefix matching (find the previous occurrence of the current token, copy the
    one after it), while no fixed relative position does so across rows.
    """
    if not 1 <= min_period <= max_period:
        raise ValueError(f"need 1 <= min_period <= max_period, got min_period={min_period}, max_period={max_period}")
    if n_ctx < 1 or batch < 1:
        raise ValueError(f"batch and n_ctx must be >= 1, got batch={batch}, n_ctx={n_ctx}")
    if d_vocab < 2:
        raise ValueError(f"d_vocab must be >= 2, got {d_vocab}")
    g = generator if generator is not None else _gen(seed)
    period = torch.randint(min_period, max_period + 1, (batch,), generator=g)
    segment = torch.randint(0, d_vocab, (batch, max_period), generator=g)
    phase = (torch.rand(batch, generator=g) * period).long()
    pos = (torch.arange(n_ctx)[None] + phase[:, None]) % period[:, None]
    return segment.gather(1, pos)


def importance(n_features: int, decay: float = 1.0) -> torch.Tensor:
    """Feature importance I_i = decay**i: (n_features,) float32 (decay 1 = uniform)."""
    return decay ** torch.arange(n_features, dtype=torch.float32)


def sparse_features(n: int, n_features: int, sparsity: Union[float, torch.Tensor],
                    seed: int = 0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(n, n_features) float32: each x_i is 0 with probability ``sparsity`` (scalar or per
    feature (n_features,)), else U[0, 1]."""
    s = torch.as_tensor(sparsity, dtype=torch.float32)
    if bool(((s < 0) | (s > 1)).any()):
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    g = generator if generator is not None else _gen(seed)
    vals = torch.rand(n, n_features, generator=g)
    keep = torch.rand(n, n_features, generator=g) >= s
    return vals * keep


@dataclass
class FiniteDataset:
    """train: (T, n_features) fixed training set; test: (n_test, n_features); unit-norm rows."""

    train: torch.Tensor
    test: torch.Tensor
    sparsity: float


def _unit_rows(x: torch.Tensor, g: torch.Generator, sparsity: float) -> torch.Tensor:
    # An all-zero row has no direction; redraw its values with one random active feature.
    zero = x.norm(dim=-1) == 0
    if bool(zero.any()):
        idx = torch.randint(0, x.shape[1], (int(zero.sum()),), generator=g)
        x[zero.nonzero().squeeze(-1), idx] = torch.rand(int(zero.sum()), generator=g) + 1e-3
    return x / x.norm(dim=-1, keepdim=True)


def finite_dataset(T: int, n_features: int, sparsity: float, seed: int = 0,
                   n_test: int = 1024) -> FiniteDataset:
    """A double-descent data set (Henighan et al. 2023): T sparse vectors rescaled to
    ||x|| = 1 (rows with no active feature get one), plus ``n_test`` test vectors."""
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    g = _gen(seed)
    train = _unit_rows(sparse_features(T, n_features, sparsity, generator=g), g, sparsity)
    test = _unit_rows(sparse_features(n_test, n_features, sparsity, generator=g), g, sparsity)
    return FiniteDataset(train=train, test=test, sparsity=sparsity)
