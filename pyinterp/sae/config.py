"""Dictionary configuration, stored as JSON in checkpoints and (translated) in SAELens cfg.json."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from pyinterp.sae.registry import get_sae_class

DECODER_NORMS = ("free", "unit")
# Per-row normalisations SAELens applies inside the SAE (besides the fixed scalar scale,
# which pyinterp keeps in the ``input_scale`` buffer).
ROW_NORMALIZATIONS = ("none", "constant_norm_rescale", "layer_norm")

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def dtype_name(dtype: torch.dtype) -> str:
    for name, d in DTYPES.items():
        if d == dtype:
            return name
    raise TypeError(f"dtype must be one of {tuple(DTYPES)}, got {dtype}")


def parse_dtype(value) -> torch.dtype:
    if isinstance(value, torch.dtype):
        dtype_name(value)
        return value
    name = str(value).replace("torch.", "")
    if name not in DTYPES:
        raise TypeError(f"dtype must be one of {tuple(DTYPES)}, got {value!r}")
    return DTYPES[name]


@dataclass
class SAEConfig:
    """Everything needed to rebuild a dictionary (weights aside).

    architecture: a registered architecture (pyinterp/sae/registry.py): "standard" (ReLU + L1),
        "topk", "batchtopk", "jumprelu" (inference), or one registered later.
    k: active latents per row (topk), or on average per row (batchtopk).
    l1_coefficient: lambda of the ReLU dictionary's sparsity penalty.
    decoder_norm: "free" (decoder rows unconstrained; the L1 penalty is weighted by row
        norms, Scaling Monosemanticity) or "unit" (rows kept at norm 1 and the gradient's
        component parallel to each row removed, Towards Monosemanticity).
    aux_k / aux_coefficient: the AuxK loss of Gao et al. 2024 (aux_k None: d_in // 2).
    threshold_lr: EMA rate of BatchTopK's inference threshold.
    """

    architecture: str
    d_in: int
    d_sae: int
    k: Optional[float] = None
    l1_coefficient: float = 5.0
    decoder_norm: str = "free"
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    hook_name: Optional[str] = None
    dtype: str = "float32"
    aux_k: Optional[int] = None
    aux_coefficient: float = 1.0 / 32
    threshold_lr: float = 0.01
    init_decoder_norm: Optional[float] = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        get_sae_class(self.architecture)  # ValueError naming the registered architectures
        for name in ("d_in", "d_sae"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.architecture in ("topk", "batchtopk"):
            if self.k is None:
                raise ValueError(f"k is required for architecture {self.architecture!r}")
            if self.architecture == "topk" and (isinstance(self.k, bool) or int(self.k) != self.k):
                raise ValueError(f"k must be an int for topk, got {self.k!r}")
            if not 1 <= self.k <= self.d_sae:
                raise ValueError(f"k must be in [1, d_sae={self.d_sae}], got {self.k}")
            if self.architecture == "topk":
                self.k = int(self.k)
        if self.decoder_norm not in DECODER_NORMS:
            raise ValueError(f"decoder_norm must be one of {DECODER_NORMS}, got {self.decoder_norm!r}")
        if self.normalize_activations not in ROW_NORMALIZATIONS:
            raise ValueError(
                f"normalize_activations must be one of {ROW_NORMALIZATIONS}, got "
                f"{self.normalize_activations!r}")
        parse_dtype(self.dtype)
        if self.aux_k is not None and not 1 <= self.aux_k:
            raise ValueError(f"aux_k must be >= 1, got {self.aux_k}")
        if self.l1_coefficient < 0 or self.aux_coefficient < 0:
            raise ValueError("l1_coefficient and aux_coefficient must be >= 0")

    @property
    def metadata(self):
        # SAELens reads cfg.metadata.hook_name; say how to hand a pyinterp dictionary to it.
        raise AttributeError(
            "pyinterp.sae.SAEConfig has no SAELens 'metadata': to use a pyinterp dictionary with "
            "SAELens (HookedSAETransformer.add_sae, run_with_saes), pass "
            "pyinterp.integrations.sae_lens.as_sae_lens(sae)")

    @property
    def torch_dtype(self) -> torch.dtype:
        return parse_dtype(self.dtype)

    @property
    def effective_aux_k(self) -> int:
        return min(self.aux_k or max(1, self.d_in // 2), self.d_sae)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SAEConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown SAE config fields {unknown}")
        return cls(**d)
