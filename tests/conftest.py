"""Test setup shared by every test file.

Without a GPU the Triton kernels run under Triton's interpreter on CPU tensors; the variable
must be set before triton is first imported, so it is set here, at collection time.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from kernel_testing import BACKEND_PARAMS  # noqa: E402,F401


@pytest.fixture(autouse=True)
def _seed_and_clean_backend():
    import pyinterp

    torch.manual_seed(0)
    pyinterp.set_backend(None)
    yield
    pyinterp.set_backend(None)
