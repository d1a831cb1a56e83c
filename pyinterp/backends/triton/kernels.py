"""The Triton kernels (``triton_kernels/``) as the package ``pyinterp.triton_kernels``.

In a wheel, ``triton_kernels/`` is installed as that subpackage. In a source checkout the
mapping does not exist, so the same directory is loaded under the same name from the
repository root. Importing this module imports triton: set ``TRITON_INTERPRET=1`` before that
to run the kernels on CPU tensors.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

_NAME = "pyinterp.triton_kernels"


def _load():
    try:
        return importlib.import_module(_NAME)
    except ModuleNotFoundError as exc:
        if exc.name != _NAME:
            raise
    source = Path(__file__).resolve().parents[3] / "triton_kernels" / "__init__.py"
    if not source.exists():
        raise ModuleNotFoundError(f"{_NAME} is not installed and {source} does not exist")
    spec = importlib.util.spec_from_file_location(
        _NAME, source, submodule_search_locations=[str(source.parent)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[_NAME] = module
    spec.loader.exec_module(module)
    return module


package = _load()
