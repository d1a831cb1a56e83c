"""Where pyinterp caches data it derives at run time (corpus, tokenizers)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union


def cache_dir(override: Optional[Union[str, Path]] = None) -> Path:
    """``override``, else ``$PYINTERP_CACHE``, else ``$XDG_CACHE_HOME/pyinterp`` (``~/.cache``)."""
    if override is not None:
        d = Path(override)
    elif os.environ.get("PYINTERP_CACHE"):
        d = Path(os.environ["PYINTERP_CACHE"])
    else:
        d = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pyinterp"
    d.mkdir(parents=True, exist_ok=True)
    return d

