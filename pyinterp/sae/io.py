"""Save and load dictionaries in SAELens's directory layout (never unpickling).

A directory holds ``cfg.json`` and ``sae_weights.safetensors`` with W_enc (d_in, d_sae),
W_dec (d_sae, d_in), b_enc (d_sae,), b_dec (d_in,) (+ ``threshold`` (d_sae,) for JumpReLU,
``topk_threshold`` () in SAELens's BatchTopK training saves). See
docs/decisions/sae-saelens-compatibility.md for how fields map.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional, Union

import torch

from pyinterp._files import (
    CorruptFileError,
    atomic_save_tensors,
    atomic_write_bytes,
    load_tensors,
    read_header,
    read_json,
    sha256_bytes,
    sha256_file,
)
from pyinterp.sae.config import SAEConfig, dtype_name, parse_dtype
from pyinterp.sae.registry import architecture_of, architectures, get_sae_class

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SPARSITY_FILENAME = "sparsity.safetensors"
# sae_weights.safetensors metadata key: sha256 of the cfg.json saved with it.
CFG_DIGEST_KEY = "pyinterp.cfg_sha256"
# The SAELens config format these files follow (6.x: fields d_in, d_sae, dtype, device,
# apply_b_dec_to_input, normalize_activations, reshape_activations, metadata, architecture).
FORMAT_VERSION = "6.0.0"
_SCALAR_NORMS = ("none", "expected_average_only_in")


def _sae_lens_version() -> str:
    try:
        from importlib.metadata import version

        return version("sae-lens")
    except Exception:
        return FORMAT_VERSION


# ---------------------------------------------------------------------------------- save
@torch.no_grad()
def save(sae, path: Union[str, Path], *,
         feature_density: Optional[torch.Tensor] = None) -> Path:
    """Write ``sae`` as an SAELens directory that ``sae_lens.SAE.load_from_disk`` reads.

    The fixed activation scale is folded into the weights (W_enc * s, W_dec / s, b_dec / s),
    so SAELens gives the same reconstructions from raw activations; pyinterp's own fields
    (and the scale) go to ``metadata.pyinterp`` so :func:`load` restores the module exactly
    up to rounding. Each architecture adds what its files need through its ``saelens_save``
    hook (pyinterp/sae/registry.py): e.g. a BatchTopK dictionary is saved, as SAELens does, as
    a JumpReLU with its learned threshold. ``feature_density`` (d_sae,) optionally writes
    sparsity.safetensors (log10 density, SAELens's ``sparsity`` tensor).
    """
    arch = architecture_of(sae)
    writer = getattr(sae, "write_files", None)
    if writer is not None:  # transcoders, crosscoders, CLTs: pyinterp/sae/io_dictionaries.py
        return writer(path, feature_density=feature_density)
    path = Path(path)
    cfg = sae.cfg
    s = float(sae.input_scale)
    dtype = sae.W_enc.dtype
    w = {
        "W_enc": sae.W_enc.detach().double() * s,
        "W_dec": sae.W_dec.detach().double() / s,
        "b_enc": sae.b_enc.detach().double(),
        "b_dec": sae.b_dec.detach().double() / s,
    }
    meta = {
        "sae_lens_version": _sae_lens_version(),
        "sae_lens_training_version": None,
        "hook_name": cfg.hook_name,
        "written_by": "pyinterp",
        "pyinterp": {"config": cfg.to_dict(), "input_scale": s},
    }
    if cfg.normalize_activations != "none" and s != 1.0:
        raise ValueError("cannot fold a fixed activation scale into a dictionary that also "
                         f"normalises per row ({cfg.normalize_activations!r})")
    out_cfg = {
        "architecture": arch,
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": dtype_name(dtype),
        "device": str(sae.W_enc.device),
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": cfg.normalize_activations,
        "reshape_activations": "none",
        "hook_name": cfg.hook_name,
        "metadata": meta,
    }
    sae.saelens_save(w, out_cfg, meta)
    dens = None
    if feature_density is not None:
        dens = feature_density.detach().double().cpu()
        if dens.shape != (cfg.d_sae,):
            raise ValueError(f"feature_density must have shape ({cfg.d_sae},), got {tuple(dens.shape)}")
    path.mkdir(parents=True, exist_ok=True)
    if dens is not None:
        atomic_save_tensors(path / SPARSITY_FILENAME,
                            {"sparsity": dens.clamp_min(1e-10).log10().float()})
    # The weights record the sha256 of the cfg.json written after them: a pair from two
    # saves is refused, and a save that fails (full disk) on the weights leaves the old pair.
    cfg_bytes = (json.dumps(out_cfg, indent=2, sort_keys=True) + "\n").encode()
    atomic_save_tensors(path / WEIGHTS_FILENAME, {k: v.to(dtype) for k, v in w.items()},
                        metadata={CFG_DIGEST_KEY: sha256_bytes(cfg_bytes)})
    atomic_write_bytes(path / CFG_FILENAME, cfg_bytes)
    return path


# ---------------------------------------------------------------------------------- load
def _legacy(cfg: dict) -> dict:
    """SAELens < 6 field names (as SAELens's own loader translates them)."""
    cfg = dict(cfg)
    for old, new in (("hook_point", "hook_name"), ("activation_fn_str", "activation_fn")):
        if old in cfg and new not in cfg:
            cfg[new] = cfg[old]
    if isinstance(cfg.get("normalize_activations"), bool):
        cfg["normalize_activations"] = ("expected_average_only_in"
                                        if cfg["normalize_activations"] else "none")
    if cfg.get("normalize_activations") is None:
        cfg["normalize_activations"] = "none"
    kwargs = cfg.get("activation_fn_kwargs") or {}
    if "architecture" not in cfg:
        cfg["architecture"] = "topk" if cfg.get("activation_fn") == "topk" else "standard"
    if cfg["architecture"] == "topk" and cfg.get("k") is None and kwargs.get("k") is not None:
        cfg["k"] = kwargs["k"]
    return cfg


def _require(cfg: dict, field: str, file: Path):
    if field not in cfg or cfg[field] is None:
        raise CorruptFileError(f"{file} is missing the field {field!r}")
    return cfg[field]


def _size(value, field: str, file: Path, low: int = 1, high: int = 1 << 40) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise CorruptFileError(f"{file}: {field} must be an int in [{low}, {high}], got {value!r}",
                               file)
    return value


def _check_ours(ours: dict, cfg_file: Path, cfg: dict, meta: dict) -> float:
    """metadata.pyinterp agrees with the top-level fields (which the tensors were checked
    against); returns its input_scale, which must be finite and > 0."""
    oc = ours.get("config")
    if not isinstance(oc, dict):
        raise CorruptFileError(f"{cfg_file}: metadata.pyinterp.config must be a JSON object",
                               cfg_file)
    top = {"d_in": cfg["d_in"], "d_sae": cfg["d_sae"]}
    if oc.get("architecture") == "topk":
        top["k"] = cfg.get("k")
    elif oc.get("architecture") == "batchtopk":  # saved as a JumpReLU, k in the metadata
        top["k"] = (meta.get("training_architecture_details") or {}).get("k")
    for field, value in top.items():
        if oc.get(field) != value:
            raise CorruptFileError(f"{cfg_file}: {field}={value!r} at the top level disagrees with "
                                   f"metadata.pyinterp.config {field}={oc.get(field)!r} (edited or "
                                   "damaged); expected equal values", cfg_file)
    scale = ours.get("input_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < float("inf"):
        raise CorruptFileError(f"{cfg_file}: metadata.pyinterp.input_scale must be a finite "
                               f"number > 0, got {scale!r}", cfg_file)
    return float(scale)


def load(path: Union[str, Path], *, device="cpu", dtype=None):
    """Read an SAELens SAE directory (written by SAELens or by :func:`save`).

    Architectures: standard, topk, batchtopk (SAELens training saves), jumprelu; SAELens
    transcoders (transcoder, skip_transcoder, jumprelu_transcoder, jumprelu_skip_transcoder)
    and pyinterp's crosscoder / CLT directories (:mod:`pyinterp.sae.io_dictionaries`); a
    sparsify checkpoint directory or a Gemma Scope parameter file's directory
    (:mod:`pyinterp.sae.io_peers`). Honours
    ``apply_b_dec_to_input``, ``normalize_activations`` (none / expected_average_only_in,
    which SAELens's disk loader does not apply either / constant_norm_rescale / layer_norm)
    and ``rescale_acts_by_decoder_norm`` (folded into the weights, same activations).
    Errors name the file and what is missing or wrong.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"SAE directory {path} does not exist (for an SAE on the Hugging "
                                "Face hub use pyinterp.sae.from_pretrained(release, sae_id))")
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not an SAE directory (cfg.json + sae_weights.safetensors)")
    cfg_file = path / CFG_FILENAME
    weights_file = path / WEIGHTS_FILENAME
    from pyinterp.sae import io_circuit_tracer, io_dictionaries, io_peers

    if not cfg_file.exists() and io_peers.is_gemma_scope(path):
        return io_peers.load_gemma_scope(path, device=device, dtype=dtype)
    if io_circuit_tracer.is_circuit_tracer(path):  # a set is a list, not one dictionary
        raise ValueError(f"{path} holds circuit-tracer transcoders: read them with "
                         "pyinterp.sae.load_circuit_tracer(path)")
    raw = read_json(cfg_file, "SAE config")
    if isinstance(raw, dict) and io_peers.is_sparsify(path, raw):
        return io_peers.load_sparsify(path, device=device, dtype=dtype)
    if isinstance(raw, dict) and raw.get("format") == io_dictionaries.LAYERED_FORMAT:
        return io_dictionaries.load_layered(path, raw, device=device, dtype=dtype)
    if isinstance(raw, dict) and raw.get("architecture") in (
            *io_dictionaries.SAELENS_TRANSCODERS.values(), io_dictionaries.TOPK_TRANSCODER):
        return io_dictionaries.load_transcoder(path, raw, device=device, dtype=dtype)
    meta = raw.get("metadata") or {}
    if not isinstance(meta, dict):
        raise CorruptFileError(f"{cfg_file}: 'metadata' must be a JSON object")
    version = str(raw.get("sae_lens_version") or meta.get("sae_lens_version") or "")
    cfg = raw if version[:1].isdigit() and int(version.split(".")[0]) >= 6 else _legacy(raw)
    arch = cfg.get("architecture", "standard")
    d_in = _size(_require(cfg, "d_in", cfg_file), "d_in", cfg_file)
    d_sae = _size(_require(cfg, "d_sae", cfg_file), "d_sae", cfg_file)
    if arch not in architectures():
        raise ValueError(f"{cfg_file}: architecture {arch!r} is not supported by pyinterp.sae "
                         f"({', '.join(architectures())})")
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise ValueError(f"{cfg_file}: reshape_activations={cfg['reshape_activations']!r} is not "
                         "supported; flatten (..., n_heads, d_head) inputs to (..., d_in) yourself")
    norm = cfg.get("normalize_activations", "none")
    if norm not in ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm"):
        raise ValueError(f"{cfg_file}: normalize_activations={norm!r} is not supported")
    if norm == "expected_average_only_in":
        warnings.warn(f"{cfg_file}: normalize_activations='expected_average_only_in' without a "
                      "stored scaling factor; like SAELens's disk loader, no scale is applied",
                      stacklevel=2)
        norm = "none"
    target_dtype = parse_dtype(dtype if dtype is not None else cfg.get("dtype", "float32"))

    if not weights_file.is_file():
        raise CorruptFileError(f"{weights_file} is missing (the weights of {cfg_file})", weights_file)
    # Sizes from the header, checked before any tensor is read or allocated.
    header, wmeta = read_header(weights_file, "SAE weights")
    needed = ["W_enc", "W_dec", "b_enc", "b_dec"] + list(
        get_sae_class(arch).saelens_tensors(cfg))
    missing = [n for n in needed if n not in header]
    if missing:
        raise CorruptFileError(f"{weights_file} is missing the tensors {missing} "
                               f"(has {sorted(header)})")
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,),
              "threshold": (d_sae,)}
    for name in needed:
        if header[name][1] != shapes[name]:
            raise CorruptFileError(
                f"{weights_file}: tensor {name} has shape {header[name][1]}, but "
                f"{cfg_file} (d_in={d_in}, d_sae={d_sae}) needs {shapes[name]}")
    if CFG_DIGEST_KEY in wmeta and wmeta[CFG_DIGEST_KEY] != sha256_file(cfg_file):
        raise CorruptFileError(f"{cfg_file} is not the config saved with {weights_file} (its "
                               "sha256 differs from the one the weights record: edited, damaged "
                               "or from another save); save the dictionary again", cfg_file)
    if arch in ("topk", "batchtopk") and cfg.get("k") is not None:
        _size(cfg["k"], "k", cfg_file, 1, d_sae)
    tensors = load_tensors(weights_file, "SAE weights")
    if "scaling_factor" in tensors and not torch.all(tensors["scaling_factor"] == 1):
        raise ValueError(f"{weights_file}: a finetuning scaling_factor is not supported")
    w = {n: tensors[n].double() for n in needed}
    if cfg.get("rescale_acts_by_decoder_norm") and arch in ("topk", "batchtopk"):
        # SAELens scales pre-activations by ||W_dec_i|| and divides them back in decode:
        # the same map as weights with the norms folded in.
        n = w["W_dec"].norm(dim=1)
        w["W_enc"] = w["W_enc"] * n
        w["b_enc"] = w["b_enc"] * n
        w["W_dec"] = w["W_dec"] / n[:, None]

    ours = meta.get("pyinterp") if isinstance(meta.get("pyinterp"), dict) else None
    hook_name = meta.get("hook_name", cfg.get("hook_name"))
    if ours is not None:
        scale = _check_ours(ours, cfg_file, cfg, meta)
        try:
            sc = SAEConfig.from_dict(dict(ours["config"], dtype=dtype_name(target_dtype)))
        except (TypeError, ValueError) as exc:
            raise CorruptFileError(f"{cfg_file}: metadata.pyinterp.config is not a valid "
                                   f"dictionary config ({exc})", cfg_file) from None
        if sc.architecture == "batchtopk" and "threshold" in w:
            threshold = w.pop("threshold")[0]
        else:
            threshold = w.pop("threshold", None)
    else:
        threshold = w.pop("threshold", None)
        k = cfg.get("k")
        train_arch = meta.get("training_architecture")
        details = meta.get("training_architecture_details") or {}
        if arch == "jumprelu" and train_arch == "batchtopk" and threshold is not None \
                and details.get("k") is not None and bool(torch.all(threshold == threshold[0])):
            arch, k, threshold = "batchtopk", details["k"], threshold[0]
        elif arch == "batchtopk":
            threshold = tensors.get("topk_threshold", torch.zeros(())).double()
        if arch in ("topk", "batchtopk") and k is None:
            raise CorruptFileError(f"{cfg_file} is missing the field 'k' "
                                   f"(architecture {arch!r})")
        try:
            sc = SAEConfig(architecture=arch, d_in=d_in, d_sae=d_sae,
                           k=k if arch in ("topk", "batchtopk") else None,
                           apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
                           normalize_activations=norm, hook_name=hook_name,
                           dtype=dtype_name(target_dtype))
        except (TypeError, ValueError) as exc:
            raise CorruptFileError(f"{cfg_file} does not describe a valid dictionary ({exc})",
                                   cfg_file) from None
        scale = 1.0
    sae = get_sae_class(sc.architecture)(cfg=sc, device=device)
    with torch.no_grad():
        # Undo the fold that save() applied, back to the training parametrisation.
        sae.W_enc.copy_(w["W_enc"] / scale)
        sae.W_dec.copy_(w["W_dec"] * scale)
        sae.b_enc.copy_(w["b_enc"])
        sae.b_dec.copy_(w["b_dec"] * scale)
        sae.input_scale.fill_(scale)
        sae.saelens_load({"threshold": threshold} if threshold is not None else {})
    sae.data_initialised = True  # fine-tuning keeps the loaded scale and b_dec
    return sae.eval()


def load_sparsity(path: Union[str, Path]) -> Optional[torch.Tensor]:
    """log10 feature densities from sparsity.safetensors, or None when the file is absent."""
    f = Path(path) / SPARSITY_FILENAME
    if not f.exists():
        return None
    t = load_tensors(f, "SAE sparsity")
    if "sparsity" not in t:
        raise CorruptFileError(f"{f} is missing the tensor 'sparsity' (has {sorted(t)})")
    return t["sparsity"]
