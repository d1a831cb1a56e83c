"""Peers' checkpoints read from local directories (never unpickling; docs/dictionaries.md).

**sparsify** (EleutherAI): one directory per hook point holding ``cfg.json`` (the
``SparseCoderConfig`` fields plus ``d_in``) and ``sae.safetensors`` with ``encoder.weight``
(m, d_in), ``encoder.bias`` (m,), ``W_dec`` (m, d_out), ``b_dec`` (d_out,) and, with
``skip_connection``, ``W_skip`` (d_out, d_in). sparsify's forward: f = TopK_k(ReLU(x' W^T + b))
with x' = x - b_dec for an SAE and x' = x for a transcoder (``transcode``), y = f W_dec +
b_dec (+ x W_skip^T). An SAE loads as :class:`~pyinterp.sae.TopKSAE`, a transcoder as a TopK
:class:`~pyinterp.sae.Transcoder`. (SAELens's own sparsify loader centres by ``not
normalize_decoder`` instead; pyinterp follows sparsify's code: docs/decisions/sae-peer-formats.md.)

**Gemma Scope** (Google DeepMind): ``params.npz`` (Gemma Scope 1 SAEs and transcoders: W_enc
(d_in, d_sae), W_dec (d_sae, d_out), b_enc, b_dec, threshold) or ``params.safetensors``
(Gemma Scope 2: the same in lower case, ``w_enc`` ..., plus ``affine_skip_connection`` (d_in,
d_out) for affine transcoders). JumpReLU without input centring: f = ReLU(pre) [pre >
threshold], pre = x W_enc + b_enc; y = f W_dec + b_dec (+ x A). ``np.load(..., allow_pickle=False)``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from pyinterp._files import CorruptFileError, load_tensors, read_json
from pyinterp.sae.config import dtype_name, parse_dtype
from pyinterp.sae.registry import get_sae_class

SPARSIFY_WEIGHTS = "sae.safetensors"
GEMMA_FILES = ("params.npz", "params.safetensors")


def is_sparsify(path, raw: dict) -> bool:
    """A sparsify checkpoint directory: sae.safetensors and a config with sparsify's fields."""
    return (Path(path) / SPARSIFY_WEIGHTS).is_file() and "architecture" not in raw and \
        any(f in raw for f in ("num_latents", "expansion_factor")) and "k" in raw


def is_gemma_scope(path) -> bool:
    p = Path(path)
    return p.is_file() and p.name in GEMMA_FILES or any((p / f).is_file() for f in GEMMA_FILES)


def _need(t: dict, name: str, file: Path, shape=None) -> torch.Tensor:
    if name not in t:
        raise CorruptFileError(f"{file} is missing the tensor {name!r} (has {sorted(t)})", file)
    if shape is not None and tuple(t[name].shape) != tuple(shape):
        raise CorruptFileError(f"{file}: tensor {name} has shape {tuple(t[name].shape)}, "
                               f"expected {tuple(shape)}", file)
    return t[name]


def load_sparsify(path, *, hook_name: Optional[str] = None, hook_name_out: Optional[str] = None,
                  device="cpu", dtype=None):
    """A sparsify SAE (:class:`TopKSAE`) or transcoder (TopK :class:`Transcoder`) from its
    checkpoint directory (``<run>/<hookpoint>/``). ``hook_name``/``hook_name_out``: the
    pyinterp hook names to record (sparsify names HF modules, e.g. ``layers.3.mlp``)."""
    TopKSAE, Transcoder = get_sae_class("topk"), get_sae_class("transcoder")
    path = Path(path)
    cfg_file, weights_file = path / "cfg.json", path / SPARSIFY_WEIGHTS
    raw = read_json(cfg_file, "sparsify config")
    for flag in ("signed", "multi_topk_only", "embed_skip", "gram_lookup", "monet"):
        if raw.get(flag):
            raise ValueError(f"{cfg_file}: sparsify option {flag}=True is not supported")
    if raw.get("activation", "topk") != "topk":
        raise ValueError(f"{cfg_file}: sparsify activation {raw['activation']!r} is not supported "
                         "(only topk)")
    d_in = raw.get("d_in")
    if isinstance(d_in, bool) or not isinstance(d_in, int) or d_in < 1:
        raise CorruptFileError(f"{cfg_file}: d_in must be a positive int, got {d_in!r}", cfg_file)
    t = load_tensors(weights_file, "sparsify weights")
    W = _need(t, "encoder.weight", weights_file)
    m = raw.get("num_latents") or d_in * raw.get("expansion_factor", 0)
    if tuple(W.shape) != (m, d_in):
        raise CorruptFileError(f"{weights_file}: encoder.weight has shape {tuple(W.shape)}, the "
                               f"config needs ({m}, {d_in})", weights_file)
    W_dec = _need(t, "W_dec", weights_file)
    d_out = W_dec.shape[1] if W_dec.dim() == 2 else -1
    _need(t, "W_dec", weights_file, (m, d_out))
    b_enc = _need(t, "encoder.bias", weights_file, (m,)) if "encoder.bias" in t else torch.zeros(m)
    b_dec = _need(t, "b_dec", weights_file, (d_out,))
    transcode, skip = bool(raw.get("transcode", False)), bool(raw.get("skip_connection", False))
    target = parse_dtype(dtype) if dtype is not None else W.dtype
    k = raw.get("k")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= m:
        raise CorruptFileError(f"{cfg_file}: k must be an int in [1, {m}], got {k!r}", cfg_file)
    if transcode or skip:
        if skip and not transcode:
            raise ValueError(f"{cfg_file}: a sparsify SAE with skip_connection is not supported "
                             "(transcoders with skip_connection are)")
        d = Transcoder(d_in, m, activation="topk", k=k, d_out=d_out, skip=skip,
                       hook_name=hook_name, hook_name_out=hook_name_out, dtype=dtype_name(target),
                       device=device)
    else:
        d = TopKSAE(d_in, m, k=k, apply_b_dec_to_input=True, hook_name=hook_name,
                    dtype=dtype_name(target), device=device)
    with torch.no_grad():
        d.W_enc.copy_(W.T)
        d.b_enc.copy_(b_enc)
        d.W_dec.copy_(W_dec)
        d.b_dec.copy_(b_dec)
        if skip:
            d.W_skip.copy_(_need(t, "W_skip", weights_file, (d_out, d_in)))
    d.data_initialised = True
    return d.eval()


def _gemma_arrays(file: Path) -> dict:
    if file.suffix == ".npz":
        import numpy as np

        try:
            with np.load(file, allow_pickle=False) as data:
                return {k.lower(): torch.from_numpy(data[k].copy()) for k in data.files}
        except ValueError as exc:  # an object array (pickled) or a damaged archive
            raise CorruptFileError(f"{file} is not a plain-array .npz ({exc})", file) from None
        except OSError as exc:
            raise CorruptFileError(f"{file} cannot be read as .npz ({exc})", file) from None
    return {k.lower(): v for k, v in load_tensors(file, "Gemma Scope parameters").items()}


def load_gemma_scope(path, *, hook_name: Optional[str] = None,
                     hook_name_out: Optional[str] = None, transcoder: Optional[bool] = None,
                     device="cpu", dtype=None):
    """A Gemma Scope JumpReLU SAE (:class:`JumpReLUSAE`) or transcoder (JumpReLU
    :class:`Transcoder`, affine skip when the file has one) from ``params.npz`` /
    ``params.safetensors`` (``path``: the file or its directory). ``transcoder``: force the
    kind (default: a transcoder when d_out != d_in, the file has an affine connection, or
    ``hook_name_out`` is given)."""
    JumpReLUSAE, Transcoder = get_sae_class("jumprelu"), get_sae_class("transcoder")
    p = Path(path)
    file = p if p.is_file() else next((p / f for f in GEMMA_FILES if (p / f).is_file()), None)
    if file is None:
        raise FileNotFoundError(f"no Gemma Scope parameter file ({' or '.join(GEMMA_FILES)}) "
                                f"at {p}")
    t = _gemma_arrays(file)
    W_enc = _need(t, "w_enc", file)
    if W_enc.dim() != 2:
        raise CorruptFileError(f"{file}: w_enc must be 2-D (d_in, d_sae), got {tuple(W_enc.shape)}",
                               file)
    d_in, d_sae = W_enc.shape
    W_dec = _need(t, "w_dec", file)
    if W_dec.dim() != 2 or W_dec.shape[0] != d_sae:
        raise CorruptFileError(f"{file}: w_dec must be (d_sae={d_sae}, d_out), got "
                               f"{tuple(W_dec.shape)} (cross-layer decoders are not read here)",
                               file)
    d_out = W_dec.shape[1]
    b_enc = _need(t, "b_enc", file, (d_sae,))
    b_dec = _need(t, "b_dec", file, (d_out,))
    thr = _need(t, "threshold", file, (d_sae,))
    affine = t.get("affine_skip_connection")
    if affine is not None:
        _need(t, "affine_skip_connection", file, (d_in, d_out))
    if transcoder is None:
        transcoder = d_out != d_in or affine is not None or hook_name_out is not None
    target = parse_dtype(dtype) if dtype is not None else torch.float32
    if transcoder:
        d = Transcoder(d_in, d_sae, activation="jumprelu", d_out=d_out, skip=affine is not None,
                       hook_name=hook_name, hook_name_out=hook_name_out,
                       dtype=dtype_name(target), device=device)
    else:
        if affine is not None:
            raise ValueError(f"{file} has an affine skip connection: load it as a transcoder")
        d = JumpReLUSAE(d_in, d_sae, apply_b_dec_to_input=False, hook_name=hook_name,
                        dtype=dtype_name(target), device=device)
    with torch.no_grad():
        d.W_enc.copy_(W_enc)
        d.W_dec.copy_(W_dec)
        d.b_enc.copy_(b_enc)
        d.b_dec.copy_(b_dec)
        d.threshold.copy_(thr)
        if affine is not None:
            d.W_skip.copy_(affine.T)
    d.data_initialised = True
    return d.eval()
