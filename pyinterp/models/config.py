"""Configuration of pyinterp's small decoder-only transformer (TransformerLens field names)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Optional

ACT_FNS = ("gelu", "solu_ln", "relu", None)
POSITIONALS = ("learned", "rotary")
NORMALIZATIONS = ("ln", None)
DTYPES = ("float32", "float64", "float16", "bfloat16")


@dataclass
class TransformerConfig:
    """Shape and options of :class:`pyinterp.models.Transformer`.

    ``act_fn=None`` makes an attention-only model (no MLP blocks). ``d_head`` defaults to
    ``d_model // n_heads`` and ``d_mlp`` to ``4 * d_model``. JSON serialisable
    (:meth:`to_dict` / :meth:`from_dict`).
    """

    n_layers: int = 2
    d_model: int = 256
    n_heads: int = 4
    d_head: Optional[int] = None
    d_mlp: Optional[int] = None
    d_vocab: int = 4096
    n_ctx: int = 256
    act_fn: Optional[str] = "solu_ln"
    positional: str = "learned"
    tied_embeddings: bool = False
    normalization: Optional[str] = "ln"
    seed: int = 0
    init_std: float = 0.02
    ln_eps: float = 1e-5
    rotary_base: float = 10000.0
    rotary_dim: Optional[int] = None
    dtype: str = "float32"
    # Number of key/value heads; equal to n_heads here (adapters of GQA models set it lower).
    n_key_value_heads: Optional[int] = None

    def __post_init__(self):
        for name in ("n_layers", "d_model", "n_heads", "d_vocab", "n_ctx"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "n_layers" else 1):
                raise ValueError(f"TransformerConfig.{name} must be a positive int, got {v!r}")
        if self.d_head is None:
            if self.d_model % self.n_heads:
                raise ValueError(
                    f"TransformerConfig.d_head must be given when d_model ({self.d_model}) is not "
                    f"divisible by n_heads ({self.n_heads})")
            self.d_head = self.d_model // self.n_heads
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        if self.n_key_value_heads is None:
            self.n_key_value_heads = self.n_heads
        if self.act_fn not in ACT_FNS:
            raise ValueError(f"TransformerConfig.act_fn must be one of {ACT_FNS}, got {self.act_fn!r}")
        if self.positional not in POSITIONALS:
            raise ValueError(
                f"TransformerConfig.positional must be one of {POSITIONALS}, got {self.positional!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"TransformerConfig.normalization must be one of {NORMALIZATIONS}, "
                             f"got {self.normalization!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"TransformerConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.rotary_dim is None:
            self.rotary_dim = self.d_head
        if self.positional == "rotary" and (self.rotary_dim % 2 or self.rotary_dim > self.d_head):
            raise ValueError(f"TransformerConfig.rotary_dim must be even and <= d_head "
                             f"({self.d_head}), got {self.rotary_dim}")

    @property
    def attn_only(self) -> bool:
        return self.act_fn is None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TransformerConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TransformerConfig fields {unknown}; known: {sorted(known)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "TransformerConfig":
        return cls.from_dict(json.loads(s))
