"""Save and load pyinterp models: ``model.safetensors`` + ``config.json`` in a directory.

Writes are atomic (each file is written to a temporary name and renamed), never pickle.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Union

import torch

from pyinterp.models.config import TransformerConfig

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
ARCH = "pyinterp.Transformer"


def atomic_write_text(path: Union[str, Path], text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_save_tensors(tensors: Dict[str, torch.Tensor], path: Union[str, Path],
                        metadata: Dict[str, str] = None) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
              metadata=metadata)
    os.replace(tmp, path)


def load_tensors(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def save_model(model, directory: Union[str, Path]) -> Path:
    """Write ``model`` (a :class:`Transformer`) to ``directory`` (created if needed)."""
    from pyinterp.models.transformer import Transformer

    if not isinstance(model, Transformer):
        raise TypeError(f"save_model saves a pyinterp.models.Transformer, got {type(model).__name__}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(model.state_dict(), d / WEIGHTS, metadata={"format": "pt"})
    atomic_write_text(d / CONFIG, json.dumps(
        {"architecture": ARCH, "config": model.cfg.to_dict()}, indent=2, sort_keys=True))
    tok = getattr(model, "tokenizer", None)
    if tok is not None and hasattr(tok, "save"):
        tok.save(d)
    return d


def load_model(directory: Union[str, Path], device: Union[str, torch.device] = "cpu"):
    """Load a model written by :func:`save_model`; returns an identical :class:`Transformer`."""
    from pyinterp.models.transformer import Transformer

    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"model directory {str(d)!r} does not exist")
    if not (d / CONFIG).is_file():
        raise FileNotFoundError(f"{str(d)!r} has no {CONFIG}: not a saved pyinterp model "
                                "(for Hugging Face directories use pyinterp.models.from_hf)")
    meta = json.loads((d / CONFIG).read_text())
    if meta.get("architecture") != ARCH:
        raise ValueError(f"{str(d / CONFIG)!r} describes {meta.get('architecture')!r}, not {ARCH!r} "
                         "(for Hugging Face directories use pyinterp.models.from_hf)")
    if not (d / WEIGHTS).is_file():
        raise FileNotFoundError(f"{str(d)!r} has no weights file {WEIGHTS}")
    model = Transformer(TransformerConfig.from_dict(meta["config"]))
    model.load_state_dict(load_tensors(d / WEIGHTS), strict=True)
    try:
        from pyinterp.data.tokenizer import load_tokenizer

        tok = load_tokenizer(d)
        if tok is not None:
            model.tokenizer = tok
    except ImportError:
        pass
    return model.to(device)
