"""Save and load pyinterp models: ``model.safetensors`` + ``config.json`` in a directory.

Written through :mod:`pyinterp._files` (atomic, fsynced, never pickle). ``config.json`` is
written last and records the sha256 of the weights (and tokenizer) beside it plus its own,
so a damaged or mismatched file is refused with an error naming it. Loading checks every
tensor's shape in the weights file against the config before anything is allocated (the
model is first built on the ``meta`` device).
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import torch

from pyinterp._files import (
    CorruptFileError,
    atomic_save_tensors,
    atomic_write_json,
    inside,
    load_tensors,
    parse_header,
    read_json,
    read_verified,
    sha256_file,
)
from pyinterp.models.config import TransformerConfig

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
ARCH = "pyinterp.Transformer"


def save_model(model, directory: Union[str, Path]) -> Path:
    """Write ``model`` (a :class:`Transformer`) to ``directory`` (created if needed)."""
    from pyinterp.models.transformer import Transformer

    if not isinstance(model, Transformer):
        raise TypeError(f"save_model saves a pyinterp.models.Transformer, got {type(model).__name__}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files = {}
    tok = getattr(model, "tokenizer", None)
    if tok is not None and hasattr(tok, "save"):
        from pyinterp.data.tokenizer import TOKENIZER_FILE

        tok.save(d)
        files[TOKENIZER_FILE] = sha256_file(d / TOKENIZER_FILE)
    atomic_save_tensors(d / WEIGHTS, model.state_dict(), metadata={"format": "pt"})
    files[WEIGHTS] = sha256_file(d / WEIGHTS)
    atomic_write_json(d / CONFIG, {"architecture": ARCH, "config": model.cfg.to_dict(),
                                   "files": files}, checksum=True)
    return d


def _check_shapes(model, entries: dict, weights: Path) -> None:
    """The weights file's tensors are exactly the model's, shape for shape."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: shape for k, (_, shape) in entries.items()}
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or extra:
        raise CorruptFileError(f"{weights} does not match {CONFIG}: missing tensors {missing}, "
                               f"unexpected tensors {extra}", weights)
    for k, shape in expected.items():
        if got[k] != shape:
            raise CorruptFileError(f"{weights}: tensor {k} has shape {got[k]}, the config "
                                   f"beside it needs {shape}", weights)


def load_model(directory: Union[str, Path], device: Union[str, torch.device] = "cpu"):
    """Load a model written by :func:`save_model`; returns an identical :class:`Transformer`.

    A missing directory or config raises FileNotFoundError; a damaged, truncated or
    mismatched file raises :class:`pyinterp.CorruptFileError` naming it.
    """
    from pyinterp.models.transformer import Transformer

    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"model directory {str(d)!r} does not exist")
    cfg_file = d / CONFIG
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{str(d)!r} has no {CONFIG}: not a saved pyinterp model "
                                "(for Hugging Face directories use pyinterp.models.from_hf)")
    meta = read_json(cfg_file, "model config")
    if meta.get("architecture") != ARCH:
        raise ValueError(f"{str(cfg_file)!r} describes {meta.get('architecture')!r}, not {ARCH!r} "
                         "(for Hugging Face directories use pyinterp.models.from_hf)")
    try:
        cfg = TransformerConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptFileError(f"{cfg_file} holds no valid model config ({exc})", cfg_file) from None
    files = meta.get("files", {})
    if not isinstance(files, dict):
        raise CorruptFileError(f"{cfg_file}: 'files' must map file names to sha256", cfg_file)
    weights = d / WEIGHTS
    if not weights.is_file():
        raise CorruptFileError(f"{d} has no weights file: {weights} is missing"
                               + (f" (listed in {cfg_file})" if WEIGHTS in files else ""), weights)
    for name, digest in files.items():  # every listed file, before anything is built
        inside(d, name, "file", cfg_file)
    data = (read_verified(weights, files[WEIGHTS], "model weights", cfg_file)
            if WEIGHTS in files else weights.read_bytes())
    entries, _ = parse_header(data, len(data), weights, "model weights")
    with torch.device("meta"):
        model = Transformer(cfg)
    _check_shapes(model, entries, weights)
    model.load_state_dict(load_tensors(weights, "model weights", data=data), strict=True,
                          assign=True)
    from pyinterp.data.tokenizer import TOKENIZER_FILE, load_tokenizer

    if TOKENIZER_FILE in files:
        read_verified(d / TOKENIZER_FILE, files[TOKENIZER_FILE], "tokenizer", cfg_file)
    try:
        tok = load_tokenizer(d)
        if tok is not None:
            model.tokenizer = tok
    except ImportError:
        pass
    return model.to(device)
