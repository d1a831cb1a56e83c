"""Files of the dictionaries beyond SAEs (never unpickling; docs/dictionaries.md, "Files").

- **Transcoders** in SAELens's layout: ``cfg.json`` + ``sae_weights.safetensors`` with W_enc
  (d_in, d_sae), W_dec (d_sae, d_out), b_enc (d_sae,), b_dec (d_out,), ``threshold`` (d_sae,)
  for JumpReLU, ``W_skip`` (d_out, d_in) for skip transcoders; architecture ``transcoder``,
  ``skip_transcoder``, ``jumprelu_transcoder`` or ``jumprelu_skip_transcoder`` (the four
  SAELens 6 loads), fixed activation scales folded into the weights, pyinterp's own config in
  ``metadata.pyinterp``. A BatchTopK transcoder is saved, as SAELens saves BatchTopK SAEs, as a
  JumpReLU transcoder with its scalar threshold. SAELens has no TopK transcoder: those are
  saved as architecture ``topk_transcoder`` (same layout plus ``k``; readable by pyinterp
  only).
- **Crosscoders and CLTs** (no peer format holds them): ``cfg.json`` ``{"format":
  "pyinterp-dictionary-1", "architecture", "config", "tensors"}`` + ``weights.safetensors``
  holding the module's state dict (names and shapes in docs/dictionaries.md), the config's
  sha256 in the weights' metadata so a mismatched pair is refused.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch

from pyinterp._files import (
    CorruptFileError,
    atomic_save_tensors,
    atomic_write_json,
    load_tensors,
    read_header,
    sha256_file,
)
from pyinterp.sae.config import SAEConfig, dtype_name, parse_dtype

CFG_FILENAME = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
LAYERED_WEIGHTS = "weights.safetensors"
LAYERED_FORMAT = "pyinterp-dictionary-1"
CFG_DIGEST_KEY = "pyinterp.cfg_sha256"
# (activation, skip) -> SAELens architecture name
SAELENS_TRANSCODERS = {("relu", False): "transcoder", ("relu", True): "skip_transcoder",
                       ("jumprelu", False): "jumprelu_transcoder",
                       ("jumprelu", True): "jumprelu_skip_transcoder"}
TOPK_TRANSCODER = "topk_transcoder"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("sae-lens")
    except Exception:
        return "6.0.0"


def _int(cfg: dict, field: str, file: Path, low: int = 1, high: int = 1 << 40) -> int:
    v = cfg.get(field)
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise CorruptFileError(f"{file}: {field} must be an int in [{low}, {high}], got {v!r}", file)
    return v


def _check_scale(v, field: str, file: Path) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
        raise CorruptFileError(f"{file}: {field} must be a finite number > 0, got {v!r}", file)
    return float(v)


# ----------------------------------------------------------------------------- transcoders
@torch.no_grad()
def save_transcoder(tc, path, *, feature_density: Optional[torch.Tensor] = None) -> Path:
    """Write transcoder ``tc`` in SAELens's layout (see the module docstring)."""
    path = Path(path)
    cfg = tc.cfg
    s_in, s_out = float(tc.input_scale), float(tc.output_scale)
    dtype = tc.W_enc.dtype
    w = {"W_enc": tc.W_enc.double() * s_in, "b_enc": tc.b_enc.double(),
         "W_dec": tc.W_dec.double() / s_out, "b_dec": tc.b_dec.double() / s_out}
    if tc.W_skip is not None:
        w["W_skip"] = tc.W_skip.double() * (s_in / s_out)
    act = tc.activation
    meta = {"sae_lens_version": _version(), "sae_lens_training_version": None,
            "hook_name": cfg.hook_name, "hook_name_out": cfg.hook_name_out,
            "written_by": "pyinterp",
            "pyinterp": {"config": cfg.to_dict(), "input_scale": s_in, "output_scale": s_out}}
    if act == "jumprelu":
        w["threshold"] = tc.threshold.double()
    elif act == "batchtopk":
        w["threshold"] = torch.full((cfg.d_sae,), float(tc.threshold), dtype=torch.float64)
        meta["training_architecture"] = "batchtopk_transcoder"
        meta["training_architecture_details"] = {"k": cfg.k}
    if act == "topk":
        arch = TOPK_TRANSCODER
    else:  # BatchTopK inference is a JumpReLU with one threshold
        arch = SAELENS_TRANSCODERS[("relu" if act == "relu" else "jumprelu", cfg.skip)]
    out_cfg = {"architecture": arch, "d_in": cfg.d_in, "d_sae": cfg.d_sae, "d_out": tc.d_out,
               "dtype": dtype_name(dtype), "device": str(tc.W_enc.device),
               "apply_b_dec_to_input": False, "normalize_activations": "none",
               "reshape_activations": "none", "hook_name": cfg.hook_name,
               "hook_name_out": cfg.hook_name_out, "metadata": meta}
    if act == "topk":
        out_cfg.update(k=int(cfg.k), skip=cfg.skip)
    path.mkdir(parents=True, exist_ok=True)
    if feature_density is not None:
        dens = feature_density.detach().double().cpu()
        if dens.shape != (cfg.d_sae,):
            raise ValueError(f"feature_density must have shape ({cfg.d_sae},), got {tuple(dens.shape)}")
        atomic_save_tensors(path / "sparsity.safetensors",
                            {"sparsity": dens.clamp_min(1e-10).log10().float()})
    atomic_write_json(path / CFG_FILENAME, out_cfg)
    atomic_save_tensors(path / SAELENS_WEIGHTS, {k: v.to(dtype) for k, v in w.items()},
                        metadata={CFG_DIGEST_KEY: sha256_file(path / CFG_FILENAME)})
    return path


def load_transcoder(path, raw: dict, *, device="cpu", dtype=None):
    """A :class:`~pyinterp.sae.Transcoder` from a SAELens transcoder directory (written by
    SAELens or by :func:`save_transcoder`); ``raw`` is its parsed cfg.json."""
    from pyinterp.sae.registry import get_sae_class

    Transcoder = get_sae_class("transcoder")
    path = Path(path)
    cfg_file, weights_file = path / CFG_FILENAME, path / SAELENS_WEIGHTS
    arch = raw.get("architecture")
    meta = raw.get("metadata") or {}
    if not isinstance(meta, dict):
        raise CorruptFileError(f"{cfg_file}: 'metadata' must be a JSON object", cfg_file)
    d_in, d_sae = _int(raw, "d_in", cfg_file), _int(raw, "d_sae", cfg_file)
    d_out = _int(raw, "d_out", cfg_file) if raw.get("d_out") is not None else d_in
    if raw.get("apply_b_dec_to_input"):
        raise ValueError(f"{cfg_file}: apply_b_dec_to_input=True is not a transcoder (SAELens "
                         "refuses it too)")
    if raw.get("normalize_activations", "none") not in ("none", None):
        raise ValueError(f"{cfg_file}: normalize_activations={raw['normalize_activations']!r} is "
                         "not supported for transcoders")
    skip = arch in ("skip_transcoder", "jumprelu_skip_transcoder") or (
        arch == TOPK_TRANSCODER and bool(raw.get("skip")))
    act = "jumprelu" if arch.startswith("jumprelu") else "topk" if arch == TOPK_TRANSCODER \
        else "relu"
    header, wmeta = read_header(weights_file, "transcoder weights")
    shapes = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_out), "b_dec": (d_out,)}
    if act == "jumprelu":
        shapes["threshold"] = (d_sae,)
    if skip:
        shapes["W_skip"] = (d_out, d_in)
    for name, shape in shapes.items():
        if name not in header:
            raise CorruptFileError(f"{weights_file} is missing the tensor {name!r} (architecture "
                                   f"{arch!r}; has {sorted(header)})", weights_file)
        if tuple(header[name][1]) != shape:
            raise CorruptFileError(f"{weights_file}: tensor {name} has shape "
                                   f"{tuple(header[name][1])}, {cfg_file} needs {shape}",
                                   weights_file)
    if CFG_DIGEST_KEY in wmeta and wmeta[CFG_DIGEST_KEY] != sha256_file(cfg_file):
        raise CorruptFileError(f"{cfg_file} is not the config saved with {weights_file} (sha256 "
                               "differs): edited, damaged or from another save", cfg_file)
    target = parse_dtype(dtype if dtype is not None else raw.get("dtype", "float32"))
    t = {k: v.double() for k, v in load_tensors(weights_file, "transcoder weights").items()}
    ours = meta.get("pyinterp") if isinstance(meta.get("pyinterp"), dict) else None
    s_in = s_out = 1.0
    if ours is not None:
        try:
            sc = SAEConfig.from_dict(dict(ours["config"], dtype=dtype_name(target)))
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptFileError(f"{cfg_file}: metadata.pyinterp.config is not a valid "
                                   f"transcoder config ({exc})", cfg_file) from None
        if (sc.architecture, sc.d_in, sc.d_sae, sc.output_width, sc.skip) != (
                "transcoder", d_in, d_sae, d_out, skip):
            raise CorruptFileError(f"{cfg_file}: metadata.pyinterp.config disagrees with the "
                                   "top-level fields (edited or damaged)", cfg_file)
        s_in = _check_scale(ours.get("input_scale", 1.0), "metadata.pyinterp.input_scale", cfg_file)
        s_out = _check_scale(ours.get("output_scale", 1.0), "metadata.pyinterp.output_scale",
                             cfg_file)
    else:
        k = raw.get("k") if act == "topk" else None
        sc = SAEConfig(architecture="transcoder", activation=act, d_in=d_in, d_sae=d_sae,
                       d_out=d_out, k=k, skip=skip, apply_b_dec_to_input=False,
                       hook_name=meta.get("hook_name", raw.get("hook_name")),
                       hook_name_out=meta.get("hook_name_out", raw.get("hook_name_out")),
                       dtype=dtype_name(target))
    tc = Transcoder(cfg=sc, device=device)
    with torch.no_grad():
        tc.W_enc.copy_(t["W_enc"] / s_in)
        tc.b_enc.copy_(t["b_enc"])
        tc.W_dec.copy_(t["W_dec"] * s_out)
        tc.b_dec.copy_(t["b_dec"] * s_out)
        if skip:
            tc.W_skip.copy_(t["W_skip"] * (s_out / s_in))
        tc.input_scale.fill_(s_in)
        tc.output_scale.fill_(s_out)
        if tc.activation == "jumprelu":
            tc.threshold.copy_(t["threshold"])
        elif tc.activation == "batchtopk":
            tc.threshold.fill_(float(t["threshold"][0]) if "threshold" in t else 0.0)
            tc.threshold_updates.fill_(1)
    tc.data_initialised = True
    return tc.eval()


# ----------------------------------------------------------------------------- CLTs, crosscoders
@torch.no_grad()
def save_layered(d, path) -> Path:
    """Write a crosscoder / CLT: cfg.json + weights.safetensors (the module's state dict)."""
    path = Path(path)
    tensors = {k: v.detach().contiguous() for k, v in d.state_dict().items()}
    cfg = {"format": LAYERED_FORMAT, "architecture": d.cfg.architecture,
           "config": d.cfg.to_dict(), "written_by": "pyinterp",
           "tensors": {k: list(v.shape) for k, v in tensors.items()}}
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path / CFG_FILENAME, cfg)
    atomic_save_tensors(path / LAYERED_WEIGHTS, tensors,
                        metadata={CFG_DIGEST_KEY: sha256_file(path / CFG_FILENAME)})
    return path


def load_layered(path, raw: dict, *, device="cpu", dtype=None):
    """The crosscoder / CLT saved by :func:`save_layered` in ``path`` (``raw``: its cfg.json)."""
    from pyinterp.sae.registry import get_sae_class

    path = Path(path)
    cfg_file, weights_file = path / CFG_FILENAME, path / LAYERED_WEIGHTS
    if raw.get("format") != LAYERED_FORMAT or not isinstance(raw.get("config"), dict):
        raise CorruptFileError(f"{cfg_file}: not a {LAYERED_FORMAT} config (needs 'format' and a "
                               "'config' object)", cfg_file)
    try:
        conf = dict(raw["config"])
        if dtype is not None:
            conf["dtype"] = dtype_name(parse_dtype(dtype))
        sc = SAEConfig.from_dict(conf)
    except (TypeError, ValueError) as exc:
        raise CorruptFileError(f"{cfg_file}: 'config' is not a valid dictionary config ({exc})",
                               cfg_file) from None
    module = get_sae_class(sc.architecture)(cfg=sc, device="cpu")
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    header, wmeta = read_header(weights_file, "dictionary weights")
    got = {k: tuple(v[1]) for k, v in header.items()}
    if got != expected:
        raise CorruptFileError(f"{weights_file}: tensors {sorted(got.items())} do not match the "
                               f"config's {sorted(expected.items())}", weights_file)
    if wmeta.get(CFG_DIGEST_KEY) != sha256_file(cfg_file):
        raise CorruptFileError(f"{cfg_file} is not the config saved with {weights_file} (sha256 "
                               "differs or is missing): edited, damaged or from another save",
                               cfg_file)
    state = load_tensors(weights_file, "dictionary weights")
    module.load_state_dict({k: v.to(module.state_dict()[k].dtype) for k, v in state.items()})
    module.data_initialised = True
    return module.to(device).eval()
