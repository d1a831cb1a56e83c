"""Dictionary configuration, stored as JSON in checkpoints and (translated) in SAELens cfg.json."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from pyinterp.sae.registry import get_sae_class

# Latent selection of the dictionaries whose architecture does not imply it.
ACTIVATIONS = ("relu", "topk", "batchtopk", "jumprelu")
SAE_ACTIVATION = {"standard": "relu", "topk": "topk", "batchtopk": "batchtopk",
                  "jumprelu": "jumprelu", "matryoshka_topk": "topk",
                  "matryoshka_batchtopk": "batchtopk"}
MULTI_LAYER = ("crosscoder", "clt")
JUMPRELU_LOSSES = ("step", "quadratic", "tanh")
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
        "topk", "batchtopk", "jumprelu", "matryoshka_topk",
        "matryoshka_batchtopk" (SAEs); "transcoder" (hook_name -> hook_name_out, optional
        affine ``skip``); "crosscoder" (n_layers hooks ``hook_names`` in and out, one latent
        space); "clt" (cross-layer transcoder: layer l reads hook_names[l], its d_sae
        latents write to hook_names_out[l:]).
    activation: latent selection of transcoders / crosscoders / CLTs ("relu", "topk",
        "batchtopk", "jumprelu"); implied by the architecture for SAEs.
    d_sae: latents (per layer for a CLT: n_layers * d_sae in total).
    k: active latents per row (topk), or on average per row (batchtopk); per layer for a CLT.
    d_out: output width of transcoders and CLTs (default d_in).
    matryoshka_widths: nested prefix widths m_1 < ... < m_J = d_sae (Bussmann et al. 2025);
        the loss sums ||x - x_hat(latents < m_j)||^2 over j.
    JumpReLU training (Rajamanoharan et al. 2024; SAELens names in brackets): bandwidth
        (jumprelu_bandwidth), init_threshold (jumprelu_init_threshold), l0_coefficient,
        sparsity_loss "step" | "quadratic" (target_l0) | "tanh" (tanh_scale)
        (jumprelu_sparsity_loss_mode), ste_to_input (jumprelu_ste_to_input),
        pre_act_loss_coefficient (Anthropic's loss pulling dead latents' pre-activations up to
        their thresholds; JumpReLU SAEs); init_l0: when
        set, the trainer's initialisation puts each threshold at the quantile of its
        pre-activations on the first batches that makes it fire on init_l0 / d_sae of the
        rows (docs/decisions/sae-jumprelu-threshold-init.md).
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
    activation: Optional[str] = None
    d_out: Optional[int] = None
    hook_name_out: Optional[str] = None
    n_layers: Optional[int] = None
    hook_names: Optional[list] = None
    hook_names_out: Optional[list] = None
    skip: bool = False
    matryoshka_widths: Optional[list] = None
    bandwidth: float = 0.05
    init_threshold: float = 0.01
    init_l0: Optional[float] = None
    l0_coefficient: float = 1.0
    sparsity_loss: str = "step"
    target_l0: Optional[float] = None
    tanh_scale: float = 4.0
    ste_to_input: bool = False
    pre_act_loss_coefficient: Optional[float] = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        get_sae_class(self.architecture)  # ValueError naming the registered architectures
        for name in ("d_in", "d_sae"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        act = self.latent_activation
        if act in ("topk", "batchtopk"):
            if self.k is None:
                raise ValueError(f"k is required for {act} latents (architecture "
                                 f"{self.architecture!r})")
            if act == "topk" and (isinstance(self.k, bool) or int(self.k) != self.k):
                raise ValueError(f"k must be an int for topk, got {self.k!r}")
            if not 1 <= self.k <= self.d_sae:
                raise ValueError(f"k must be in [1, d_sae={self.d_sae}], got {self.k}")
            if act == "topk":
                self.k = int(self.k)
        self._validate_kinds()
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

    def _validate_kinds(self) -> None:
        arch = self.architecture
        if arch in SAE_ACTIVATION:
            if self.activation not in (None, SAE_ACTIVATION[arch]):
                raise ValueError(f"architecture {arch!r} implies activation "
                                 f"{SAE_ACTIVATION[arch]!r}, got activation={self.activation!r}")
        elif self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS} for architecture "
                             f"{arch!r}, got {self.activation!r}")
        if self.d_out is not None and (isinstance(self.d_out, bool) or not isinstance(self.d_out, int)
                                       or self.d_out < 1):
            raise ValueError(f"d_out must be a positive int, got {self.d_out!r}")
        if arch in MULTI_LAYER:
            n = self.n_layers
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"n_layers must be a positive int for architecture {arch!r}, "
                                 f"got {n!r}")
            for name in ("hook_names", "hook_names_out"):
                v = getattr(self, name)
                if v is not None:
                    if not isinstance(v, (list, tuple)) or len(v) != n:
                        raise ValueError(f"{name} must list {n} hook names (n_layers), got {v!r}")
                    setattr(self, name, [str(h) for h in v])
        if self.skip and arch != "transcoder":
            raise ValueError(f"skip (an affine W_skip x term) is for transcoders, not {arch!r}")
        if arch.startswith("matryoshka"):
            w = self.matryoshka_widths
            if not w:
                raise ValueError(f"matryoshka_widths is required for {arch!r} (nested widths "
                                 "ending at d_sae)")
            w = [int(v) for v in w]
            if any(b <= a for a, b in zip(w, w[1:])) or w[0] < 1 or w[-1] != self.d_sae:
                raise ValueError(f"matryoshka_widths must increase strictly from >= 1 to d_sae="
                                 f"{self.d_sae}, got {self.matryoshka_widths!r}")
            self.matryoshka_widths = w
        elif self.matryoshka_widths is not None:
            raise ValueError(f"matryoshka_widths is only for matryoshka architectures, not {arch!r}")
        if self.latent_activation == "jumprelu":
            if not self.bandwidth > 0:
                raise ValueError(f"bandwidth must be > 0, got {self.bandwidth}")
            if self.sparsity_loss not in JUMPRELU_LOSSES:
                raise ValueError(f"sparsity_loss must be one of {JUMPRELU_LOSSES}, got "
                                 f"{self.sparsity_loss!r}")
            if self.sparsity_loss == "quadratic" and (self.target_l0 is None or not
                                                      0 < self.target_l0 <= self.d_sae):
                raise ValueError(f"sparsity_loss='quadratic' needs target_l0 in (0, d_sae="
                                 f"{self.d_sae}], got {self.target_l0!r}")
            if self.init_l0 is not None and not 0 < self.init_l0 <= self.d_sae:
                raise ValueError(f"init_l0 must be in (0, d_sae={self.d_sae}], got {self.init_l0!r}")
            if self.l0_coefficient < 0:
                raise ValueError(f"l0_coefficient must be >= 0, got {self.l0_coefficient}")

    @property
    def latent_activation(self) -> str:
        """How latents are selected: relu, topk, batchtopk or jumprelu."""
        return SAE_ACTIVATION.get(self.architecture) or self.activation

    @property
    def output_width(self) -> int:
        """Width of each reconstructed output (d_out for transcoders / CLTs, else d_in)."""
        return self.d_out if self.d_out is not None else self.d_in

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
        return min(self.aux_k or max(1, self.output_width // 2), self.d_sae)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SAEConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown SAE config fields {unknown}")
        return cls(**d)
