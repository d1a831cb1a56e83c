"""Pretrained dictionaries from the Hugging Face hub, by SAELens release name or repository.

    sae = pyinterp.sae.from_pretrained("gpt2-small-res-jb", "blocks.8.hook_resid_pre")
    sae = pyinterp.sae.from_pretrained("org/my-saes", "layer_3")     # repo id + folder

With sae-lens installed, ``release`` is looked up in SAELens's release registry
(``pretrained_saes.yaml``: repository, folder, activation-norm scaling factor); otherwise, or
for a name the registry does not know, ``release`` is an HF repository id and ``sae_id`` the
folder holding ``cfg.json`` + ``sae_weights.safetensors`` ("" for the repository root).
Files go through ``huggingface_hub``'s cache (downloaded once; with ``HF_HUB_OFFLINE=1`` only
the cache is read) and are read by :func:`pyinterp.sae.load`.
"""
from __future__ import annotations

import warnings
from typing import Optional, Tuple

from pyinterp.sae.io import CFG_FILENAME, SPARSITY_FILENAME, WEIGHTS_FILENAME, load


def _registry_entry(release: str, sae_id: str):
    """(repo_id, folder, norm_scaling_factor, conversion, hook_override) from SAELens's
    registry, or None when sae-lens is absent or does not list ``release``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
    except ImportError:
        return None
    info = get_pretrained_saes_directory().get(release)
    if info is None:
        return None
    if sae_id not in info.saes_map:
        ids = list(info.saes_map)
        shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
        raise ValueError(f"sae_id {sae_id!r} is not in SAELens release {release!r} (ids: {shown})")
    overrides = info.config_overrides or {}
    return (info.repo_id, info.saes_map[sae_id], info.norm_scaling_factor.get(sae_id),
            info.conversion_func, overrides.get("hook_name"))


def _download(repo_id: str, filename: str, revision: Optional[str], required: bool = True):
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError as e:
        raise ImportError("pyinterp.sae.from_pretrained needs huggingface_hub: "
                          "pip install 'pyinterp[hf]'") from e
    try:
        return hf_hub_download(repo_id, filename, revision=revision)
    except LocalEntryNotFoundError as e:  # (a subclass of EntryNotFoundError: test it first)
        if not required:
            return None
        from huggingface_hub import constants

        why = ("HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
               if constants.HF_HUB_OFFLINE else "it could not be downloaded and is not cached")
        raise FileNotFoundError(f"{repo_id}/{filename}: {why} ({e})") from None
    except EntryNotFoundError:
        if not required:
            return None
        raise FileNotFoundError(f"the hub repository {repo_id!r} has no file {filename!r}") from None


def resolve(release: str, sae_id: str,
            revision: Optional[str] = None) -> Tuple[str, Optional[float], Optional[str]]:
    """Download (or find in the cache) one dictionary's files; returns (local directory,
    activation-norm scaling factor or None, hook name override or None)."""
    from pathlib import Path

    entry = _registry_entry(release, sae_id)
    if entry is None:
        repo_id, folder, scale, conversion, hook = release, sae_id, None, None, None
    else:
        repo_id, folder, scale, conversion, hook = entry
        if conversion not in (None, "sae_lens"):
            raise ValueError(
                f"SAELens release {release!r} is stored in another format (conversion "
                f"{conversion!r}) that pyinterp.sae.from_pretrained does not read; load it with "
                f"sae_lens.SAE.from_pretrained({release!r}, {sae_id!r}) and speed it up with "
                "pyinterp.sae.accelerate(sae)")
    folder = str(folder or "").strip("/")
    prefix = f"{folder}/" if folder and folder != "." else ""
    cfg = _download(repo_id, prefix + CFG_FILENAME, revision)
    _download(repo_id, prefix + WEIGHTS_FILENAME, revision)
    _download(repo_id, prefix + SPARSITY_FILENAME, revision, required=False)
    return str(Path(cfg).parent), scale, hook


def from_pretrained(release: str, sae_id: str = "", *, device="cpu", dtype=None,
                    revision: Optional[str] = None):
    """A pyinterp dictionary from the hub (see the module docstring); ``revision`` pins a
    branch, tag or commit. An activation-norm scaling factor listed in SAELens's registry
    becomes the dictionary's ``input_scale`` (what SAELens folds into the weights)."""
    path, scale, hook = resolve(release, sae_id, revision)
    with warnings.catch_warnings():
        if scale is not None:  # the registry holds the scale load() warns is missing
            warnings.filterwarnings("ignore", message=".*expected_average_only_in.*")
        sae = load(path, device=device, dtype=dtype)
    if scale is not None:
        sae.set_input_scale(float(scale))
    if hook is not None:
        sae.cfg.hook_name = hook
    return sae
