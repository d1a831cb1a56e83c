"""Run an SAELens SAE's encode/decode through pyinterp's sparse kernels.

    sae = sae_lens.SAE.load_from_disk(path)
    pyinterp.sae.accelerate(sae)        # patches this object only; restore(sae) undoes it
    sae(x)                              # TopK: sparse top-k encode + gathered decode

sae-lens is never imported by pyinterp (the object is duck-typed), so it stays optional.
Whenever a feature the kernels do not reproduce is in use (hooks attached to the SAE's hook
points, an error term, hook_z reshaping, layer-norm/whitening normalisation, sparse inputs to
decode), the original SAELens method runs instead, so results never change.
"""
from __future__ import annotations

import types

import torch

from pyinterp.sae import _kernels as K

_ORIGINAL = "_pyinterp_original"
_SUPPORTED = ("topk", "standard", "jumprelu")


def _architecture(sae) -> str:
    arch = sae.cfg.architecture
    return arch() if callable(arch) else arch


def _hooks_active(sae) -> bool:
    for name in ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons",
                 "hook_sae_output", "hook_sae_error"):
        hp = getattr(sae, name, None)
        if hp is not None and (len(getattr(hp, "_forward_hooks", {})) or
                               len(getattr(hp, "_backward_hooks", {}))):
            return True
    return False


def _plain(sae) -> bool:
    """True when the kernels give exactly SAELens's result for this object right now."""
    cfg = sae.cfg
    return (not _hooks_active(sae)
            and not getattr(sae, "use_error_term", False)
            and getattr(cfg, "reshape_activations", "none") == "none"
            and getattr(cfg, "normalize_activations", "none") in ("none", "constant_norm_rescale")
            and not getattr(sae, "hook_z_reshaping_mode", False))


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
        v, i = K.threshold_encode(x2, W_enc, b_enc, None, sae.threshold.detach().clamp_min(0))
    else:
        v, i = K.threshold_encode(x2, W_enc, b_enc, None, 0.0)
    return v, i, lead


def _decode_sparse(sae, values, indices):
    W_dec = sae.W_dec
    if bool(getattr(sae.cfg, "rescale_acts_by_decoder_norm", False)):
        values = values / sae.W_dec.norm(dim=-1)[indices]
    return K.sparse_decode(values.to(W_dec.dtype), indices, W_dec, sae.b_dec, check_indices=False)


def accelerate(sae):
    """Patch an SAELens SAE object so ``forward``/``encode``/``decode`` use pyinterp's kernels.

    Adds ``sae.encode_sparse(x) -> (values, indices)`` and ``sae.decode_sparse(values,
    indices)``. ``forward`` never builds the dense (N, d_sae) code; ``encode`` still returns
    SAELens's dense code (scattered from the sparse one); ``decode`` of a dense TopK code
    gathers its k non-zeros. Returns the same object. Idempotent; :func:`restore` undoes it.
    """
    if not all(hasattr(sae, a) for a in ("cfg", "W_enc", "W_dec", "b_dec", "process_sae_in",
                                         "encode", "decode", "forward")):
        raise TypeError(
            f"accelerate() needs an SAELens SAE object (sae_lens.SAE), got {type(sae).__name__}; "
            "install sae-lens (pip install 'pyinterp[peers]') to use SAELens SAEs")
    arch = _architecture(sae)
    if arch not in _SUPPORTED or not hasattr(sae, "b_enc"):
        hint = (" (a BatchTopK training SAE: accelerate the JumpReLU SAE that "
                "save_inference_model() writes)" if arch == "batchtopk" else "")
        raise ValueError(f"accelerate() supports SAELens architectures {_SUPPORTED}, got {arch!r}{hint}")
    if hasattr(sae, _ORIGINAL):
        return sae
    orig = {"encode": sae.encode, "decode": sae.decode, "forward": sae.forward}
    setattr(sae, _ORIGINAL, orig)
    k_fixed = arch == "topk"

    def encode_sparse(self, x):
        v, i, lead = _sparse_code(self, x)
        return v.reshape(*lead, -1), i.reshape(*lead, -1)

    def decode_sparse(self, values, indices):
        k = values.shape[-1]
        out = _decode_sparse(self, values.reshape(-1, k), indices.reshape(-1, k))
        # (un)normalise with the input's leading shape: SAELens keeps per-row state so shaped
        return self.run_time_activation_norm_fn_out(out.reshape(*values.shape[:-1], out.shape[-1]))

    def encode(self, x):
        if not _plain(self):
            return orig["encode"](x)
        v, i, lead = _sparse_code(self, x)
        dense = K.dense_from_sparse(v, i, self.cfg.d_sae)
        return dense.reshape(*lead, self.cfg.d_sae)

    def decode(self, feature_acts):
        if not k_fixed or feature_acts.is_sparse or not _plain(self):
            return orig["decode"](feature_acts)
        lead = feature_acts.shape[:-1]
        f2 = feature_acts.reshape(-1, feature_acts.shape[-1])
        # A TopK code has few non-zeros per row: gather them instead of a dense GEMM (the
        # code may have been edited, e.g. for steering, so count them rather than assume k).
        width = max(int((f2 != 0).sum(-1).max()) if f2.numel() else 1, 1)
        if width > max(int(self.cfg.k), f2.shape[-1] // 8):
            return orig["decode"](feature_acts)
        i = torch.topk(f2.abs(), width, dim=-1).indices
        v = f2.gather(-1, i)
        out = _decode_sparse(self, v, i)
        return self.run_time_activation_norm_fn_out(out.reshape(*lead, out.shape[-1]))

    def forward(self, x):
        if not _plain(self):
            return orig["forward"](x)
        v, i, lead = _sparse_code(self, x)
        out = _decode_sparse(self, v, i)
        return self.run_time_activation_norm_fn_out(out.reshape(*lead, out.shape[-1]))

    sae.encode_sparse = types.MethodType(encode_sparse, sae)
    sae.decode_sparse = types.MethodType(decode_sparse, sae)
    sae.encode = types.MethodType(encode, sae)
    sae.decode = types.MethodType(decode, sae)
    sae.forward = types.MethodType(forward, sae)
    return sae


def restore(sae):
    """Undo :func:`accelerate` on ``sae``; returns it."""
    orig = getattr(sae, _ORIGINAL, None)
    if orig is None:
        return sae
    for name in ("encode", "decode", "forward", "encode_sparse", "decode_sparse"):
        sae.__dict__.pop(name, None)
    delattr(sae, _ORIGINAL)
    return sae
