"""Run an SAELens SAE object, inference or training, through pyinterp's sparse kernels.

    sae = sae_lens.SAE.load_from_disk(path)          # or a TrainingSAE in SAELens's trainer
    pyinterp.sae.accelerate(sae)        # patches this object only; restore(sae) undoes it
    sae(x)                              # TopK: sparse top-k encode + gathered decode

sae-lens is never imported by pyinterp (the object is duck-typed), so it stays optional.

Inference SAEs (TopK, Standard, JumpReLU): ``forward`` never builds the dense code (TopK, and
Standard/JumpReLU when a sample of rows shows a sparse code); TopK ``encode`` runs the fused
top-k kernel; ``decode`` gathers the non-zero rows of W_dec. A dense ``encode`` of a
Standard/JumpReLU SAE stays SAELens's own (its GEMM + ReLU is already the fastest way to a
dense code).

Training SAEs (TopK, BatchTopK, Standard, JumpReLU ``TrainingSAE`` s): ``encode_with_hidden_pre``
(hence ``training_forward_pass``), ``decode`` and the TopK auxiliary loss keep SAELens's code
path (the same activation functions, losses, threshold updates and outputs, dense
``feature_acts``/``hidden_pre`` included) but their two linear maps use the code's sparsity:
the decoder gathers the active rows of W_dec (forward and backward), the encoder's backward
uses only the non-zero gradient entries (see :mod:`pyinterp.sae._sparse_grad`).

Whenever a feature the kernels do not reproduce is in use (hooks attached to the SAE's hook
points, an error term, hook_z reshaping, per-row normalisation in the inference kernels,
autocast, sparse COO activations, a code too dense to gain, a subclass overriding the mirrored
methods), the original SAELens method runs instead.

Exactness: results equal SAELens's up to floating-point summation order (the gathers add the
same terms in another order). Training paths compute ``hidden_pre`` with SAELens's own ops, so
they select the same latents. The inference kernels compute pre-activations in their own
order, so a pre-activation within rounding error of a JumpReLU threshold (or of 0 for ReLU, or
a near-tie at the k-th TopK value) may be kept by one implementation and dropped by the other;
in bfloat16/float16 the kernels accumulate in float32 where SAELens rounds each product, so
results differ by a few bf16 ulps.
"""
from __future__ import annotations

import types
import weakref

import torch

from pyinterp.sae import _kernels as K
from pyinterp.sae import _saelens_train as T
from pyinterp.sae import _sparse_grad as S

_ORIGINAL = "_pyinterp_original"
_CODE = "_pyinterp_code"  # (weakref to the latest feature_acts, its sparse code)
_SUPPORTED = ("topk", "standard", "jumprelu", "batchtopk")
_PER_ROW = ("topk", "standard", "jumprelu")  # kinds with per-row sparse kernels

# The SAELens 6 methods the training path reproduces, by kind: the qualified names of
# encode_with_hidden_pre, decode, training_forward_pass, calculate_aux_loss and the activation
# module. An object whose class differs in any of them (a subclass) runs unpatched.
_TRAINING_KINDS = {
    ("TopKTrainingSAE.encode_with_hidden_pre", "TopKTrainingSAE.decode",
     "TrainingSAE.training_forward_pass", "TopKTrainingSAE.calculate_aux_loss", "TopK"): "topk",
    ("TopKTrainingSAE.encode_with_hidden_pre", "TopKTrainingSAE.decode",
     "BatchTopKTrainingSAE.training_forward_pass", "TopKTrainingSAE.calculate_aux_loss",
     "BatchTopK"): "batchtopk",
    ("StandardTrainingSAE.encode_with_hidden_pre", "TrainingSAE.decode",
     "TrainingSAE.training_forward_pass", "StandardTrainingSAE.calculate_aux_loss", "ReLU"): "standard",
    ("JumpReLUTrainingSAE.encode_with_hidden_pre", "TrainingSAE.decode",
     "JumpReLUTrainingSAE.training_forward_pass", "JumpReLUTrainingSAE.calculate_aux_loss",
     "ReLU"): "jumprelu",
}
_KIND_METHODS = ("encode_with_hidden_pre", "decode", "training_forward_pass", "calculate_aux_loss")


def _architecture(sae) -> str:
    arch = sae.cfg.architecture
    return arch() if callable(arch) else arch


def _qualname(cls, method: str) -> str:
    fn = getattr(cls, method, None)
    if fn is None or not getattr(fn, "__module__", "").startswith("sae_lens."):
        return ""
    return fn.__qualname__


def _training_kind(sae):
    """The mirrored SAELens training SAE kind of ``sae``, or None (not a training SAE, or one
    whose methods differ from what the training path mirrors)."""
    if not (hasattr(sae, "training_forward_pass") and hasattr(sae, "encode_with_hidden_pre")):
        return None
    cls = type(sae)
    key = tuple(_qualname(cls, m) for m in _KIND_METHODS) + (
        type(getattr(sae, "activation_fn", None)).__name__,)
    kind = _TRAINING_KINDS.get(key)
    aux = "TopKTrainingSAE.calculate_topk_aux_loss"
    if kind == "topk" and _qualname(cls, "calculate_topk_aux_loss") != aux:
        return None
    if kind == "standard" and not getattr(sae.cfg, "lp_norm", 1.0) >= 1:
        return None  # p < 1 "norms" have no usable gradient at the code's zeros
    return kind


def _hooks_active(sae) -> bool:
    for name in ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons",
                 "hook_sae_output", "hook_sae_error"):
        hp = getattr(sae, name, None)
        if hp is not None and (len(getattr(hp, "_forward_hooks", {})) or
                               len(getattr(hp, "_backward_hooks", {}))):
            return True
    return False


def _plain(sae) -> bool:
    """True when the inference kernels give SAELens's result for this object right now."""
    cfg = sae.cfg
    return (not _hooks_active(sae)
            and not getattr(sae, "use_error_term", False)
            and getattr(cfg, "reshape_activations", "none") == "none"
            and getattr(cfg, "normalize_activations", "none") in ("none", "constant_norm_rescale")
            and not getattr(sae, "hook_z_reshaping_mode", False)
            and not torch.is_autocast_enabled())


def _train_plain(sae) -> bool:
    """True when the training path's mirror of SAELens's methods applies right now (it calls
    SAELens's own input processing and normalisation, so those are fine)."""
    return (not _hooks_active(sae)
            and not getattr(sae.cfg, "use_sparse_activations", False)
            and not getattr(sae, "hook_z_reshaping_mode", False)
            and not torch.is_autocast_enabled())


# ------------------------------------------------------------------ inference kernels
def _sparse_code(sae, x: torch.Tensor):
    """(values, indices), each (N, width), for the SAELens object's encoder; x: (..., d_in)."""
    arch = _architecture(sae)
    sae_in = sae.process_sae_in(x)  # dtype, norm, minus b_dec (as SAELens does)
    lead = sae_in.shape[:-1]
    x2 = sae_in.reshape(-1, sae_in.shape[-1])
    W_enc, b_enc = sae.W_enc, sae.b_enc
    rescale = bool(getattr(sae.cfg, "rescale_acts_by_decoder_norm", False))
    if rescale:  # hidden_pre * ||W_dec_i|| == x @ (W_enc * n) + b_enc * n
        n = sae.W_dec.norm(dim=-1)
        W_enc, b_enc = W_enc * n, b_enc * n
    if arch == "topk":
        v, i = K.topk_encode(x2, W_enc, b_enc, None, int(sae.cfg.k))
    elif arch == "jumprelu":
        v, i = K.threshold_encode(x2, W_enc, b_enc, None,
                                  sae.threshold.detach().to(x2.dtype).clamp_min(0))
    else:
        v, i = K.threshold_encode(x2, W_enc, b_enc, None, 0.0)
    return v, i, lead


def sparse_code(sae, x: torch.Tensor):
    """The sparse code (values, indices), each (..., width), of any SAELens SAE object, without
    patching it: the kernels when they reproduce its encoder (TopK, inference Standard/JumpReLU,
    no hooks), else SAELens's dense ``encode`` with each row's non-zeros gathered."""
    arch = _architecture(sae)
    kind = _training_kind(sae)
    if _plain(sae) and (arch == "topk" or (arch in _PER_ROW and kind is None)):
        v, i, lead = _sparse_code(sae, x)
        return v.reshape(*lead, -1), i.reshape(*lead, -1)
    dense = sae.encode(x)
    lead = dense.shape[:-1]
    flat = dense.reshape(-1, dense.shape[-1])
    support = S.support_of(flat != 0)
    v = S.gather(flat, support)
    return v.reshape(*lead, -1), support[0].reshape(*lead, -1)


def _threshold_forward(sae, x: torch.Tensor):
    """A Standard/JumpReLU SAE's reconstruction: SAELens's pre-activations (same ops), the
    kept entries (pre > max(threshold, 0)) gathered, the active rows of W_dec summed; None
    when the code is too dense to gain over the decoder GEMM."""
    sae_in = sae.process_sae_in(x)
    pre = sae_in @ sae.W_enc + sae.b_enc
    lead = pre.shape[:-1]
    pre2 = pre.reshape(-1, pre.shape[-1])
    thr = sae.threshold.to(pre.dtype).clamp_min(0) if _architecture(sae) == "jumprelu" else 0
    if S.probably_dense((pre2[:64] > thr).to(pre.dtype)):
        return None
    support = S.support_of(pre2 > thr)
    out = S.decode_values(S.gather(pre2, support), support[0], sae.W_dec, sae.b_dec)
    return sae.run_time_activation_norm_fn_out(out.reshape(*lead, out.shape[-1]))


def _inv_norm(sae):
    if bool(getattr(sae.cfg, "rescale_acts_by_decoder_norm", False)):
        return 1 / sae.W_dec.norm(dim=-1)
    return None


def _decode_sparse(sae, values, indices):
    return S.decode_values(values, indices, sae.W_dec, sae.b_dec, _inv_norm(sae))


# ------------------------------------------------------------------ training SAEs
def _stash(sae, code) -> None:
    sae.__dict__[_CODE] = (weakref.ref(code.feature_acts), code)


def _stashed(sae, feature_acts):
    entry = sae.__dict__.get(_CODE)
    return entry[1] if entry is not None and entry[0]() is feature_acts else None


def _training_code_dense(sae, kind, x) -> bool:
    """Would the sparse training path lose? TopK/BatchTopK: k against d_sae; Standard/JumpReLU:
    the code of a few rows (one small GEMM)."""
    d_sae = sae.cfg.d_sae
    if kind in ("topk", "batchtopk"):
        return float(sae.activation_fn.k) > S.DENSE_FRACTION * d_sae
    rows = x.reshape(-1, x.shape[-1])[:64]
    with torch.no_grad():
        pre = sae.process_sae_in(rows) @ sae.W_enc + sae.b_enc
        thr = 0.0
        if kind == "jumprelu":
            thr = sae.threshold.to(pre.dtype).clamp_min(0) - 0.5 * sae.bandwidth
        return S.probably_dense((pre > thr).to(pre.dtype))


def _sparse_training_ok(sae, kind, x) -> bool:
    return (_train_plain(sae) and x.dim() == 2 and x.shape[0] > 0
            and not _training_code_dense(sae, kind, x))


def _patched_training_forward_pass(orig, kind):
    def training_forward_pass(self, step_input):
        if not _sparse_training_ok(self, kind, step_input.sae_in):
            return orig["training_forward_pass"](step_input)
        return T.training_forward_pass(self, kind, step_input)
    return training_forward_pass


def _patched_encode_with_hidden_pre(orig, kind):
    def encode_with_hidden_pre(self, x):
        # Without gradients SAELens's dense path is as fast (nothing to save in a backward).
        if not torch.is_grad_enabled() or not _sparse_training_ok(self, kind, x):
            return orig["encode_with_hidden_pre"](x)
        code = T.encode(self, kind, x)
        _stash(self, code)  # decode() of this feature_acts uses the sparse values directly
        return code.feature_acts, code.hidden_pre
    return encode_with_hidden_pre


# ------------------------------------------------------------------ the patch
def accelerate(sae):
    """Patch an SAELens SAE object (inference or training) so its hot methods use pyinterp's
    kernels (see the module docstring). Adds ``sae.encode_sparse(x) -> (values, indices)`` and
    ``sae.decode_sparse(values, indices)`` (TopK, Standard, JumpReLU). Returns the same object.
    Idempotent; :func:`restore` undoes it."""
    if not all(hasattr(sae, a) for a in ("cfg", "W_enc", "W_dec", "b_dec", "process_sae_in",
                                         "encode", "decode", "forward")):
        raise TypeError(
            f"accelerate() needs an SAELens SAE object (sae_lens.SAE), got {type(sae).__name__}; "
            "install sae-lens (pip install 'pyinterp[peers]') to use SAELens SAEs")
    arch = _architecture(sae)
    kind = _training_kind(sae)
    if arch not in _SUPPORTED or not hasattr(sae, "b_enc") or (arch == "batchtopk" and kind is None):
        raise ValueError(f"accelerate() supports SAELens architectures {_SUPPORTED} "
                         f"(batchtopk: the training SAE), got {arch!r}")
    if hasattr(sae, _ORIGINAL):
        return sae
    names = ["encode", "decode", "forward"]
    if kind is not None:
        names += ["encode_with_hidden_pre", "training_forward_pass"]
    orig = {n: getattr(sae, n) for n in names}
    setattr(sae, _ORIGINAL, orig)
    patches = {"decode": _patched_decode(orig, kind)}
    if kind is not None:
        patches["encode_with_hidden_pre"] = _patched_encode_with_hidden_pre(orig, kind)
        patches["training_forward_pass"] = _patched_training_forward_pass(orig, kind)
    if arch in _PER_ROW:
        patches.update(encode_sparse=_encode_sparse, decode_sparse=_decode_sparse_method)
    if arch == "topk":  # the fused top-k kernel: no dense pre-activation at all
        patches.update(encode=_patched_topk_encode(orig), forward=_patched_forward(orig))
    elif arch in _PER_ROW and kind is None:  # inference Standard/JumpReLU
        patches["forward"] = _patched_forward(orig, threshold=True)
    for name, fn in patches.items():
        setattr(sae, name, types.MethodType(fn, sae))
    return sae


def _encode_sparse(self, x):
    v, i, lead = _sparse_code(self, x)
    return v.reshape(*lead, -1), i.reshape(*lead, -1)


def _check_user_code(values, indices, d_sae: int) -> None:
    """decode_sparse takes the caller's indices: check them before any kernel reads W_dec."""
    if not isinstance(values, torch.Tensor) or not isinstance(indices, torch.Tensor):
        raise TypeError("values and indices must be torch.Tensors")
    if values.dim() < 1 or values.shape != indices.shape:
        raise ValueError(f"values {tuple(values.shape)} and indices {tuple(indices.shape)} "
                         "must have the same shape (..., k)")
    if indices.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"indices must be int64 or int32, got {indices.dtype}")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= d_sae):
        raise ValueError(f"indices must lie in [0, {d_sae}) (the rows of W_dec), got values "
                         f"from {int(indices.min())} to {int(indices.max())}")


def _decode_sparse_method(self, values, indices):
    _check_user_code(values, indices, self.W_dec.shape[0])
    k = values.shape[-1]
    out = _decode_sparse(self, values.reshape(-1, k), indices.reshape(-1, k))
    # (un)normalise with the input's leading shape: SAELens keeps per-row state so shaped
    return self.run_time_activation_norm_fn_out(out.reshape(*values.shape[:-1], out.shape[-1]))


def _patched_topk_encode(orig):
    def encode(self, x):
        if not _plain(self):
            return orig["encode"](x)
        v, i, lead = _sparse_code(self, x)
        return K.dense_from_sparse(v, i, self.cfg.d_sae).reshape(*lead, self.cfg.d_sae)
    return encode


def _patched_decode(orig, kind):
    def decode(self, feature_acts):
        ok = _train_plain(self) if kind is not None else _plain(self)
        if not ok or feature_acts.is_sparse:
            return orig["decode"](feature_acts)
        code = _stashed(self, feature_acts) if kind is not None else None
        if code is not None:  # encode_with_hidden_pre's latest code: decode its values
            return T.decode(self, kind, code)
        out = S.decode(feature_acts, self.W_dec, self.b_dec, None, _inv_norm(self))
        if out is None:  # too dense: the GEMM is faster
            return orig["decode"](feature_acts)
        out = self.hook_sae_recons(out)
        out = self.run_time_activation_norm_fn_out(out)
        return self.reshape_fn_out(out, self.d_head)
    return decode


def _patched_forward(orig, threshold: bool = False):
    def forward(self, x):
        if not _plain(self):
            return orig["forward"](x)
        if threshold:  # Standard/JumpReLU: dense GEMM encoder, sparse decoder
            out = _threshold_forward(self, x)
            return orig["forward"](x) if out is None else out
        v, i, lead = _sparse_code(self, x)
        out = _decode_sparse(self, v, i)
        return self.run_time_activation_norm_fn_out(out.reshape(*lead, out.shape[-1]))
    return forward


def restore(sae):
    """Undo :func:`accelerate` on ``sae``; returns it."""
    orig = getattr(sae, _ORIGINAL, None)
    if orig is None:
        return sae
    for name in list(orig) + ["encode_sparse", "decode_sparse", _CODE]:
        sae.__dict__.pop(name, None)
    delattr(sae, _ORIGINAL)
    return sae
