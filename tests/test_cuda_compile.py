"""Every CUDA source in csrc/cuda compiles with nvcc for sm_90 (where nvcc exists).

The sources cannot run without a GPU; compiling them here is what catches their errors. The
run-time path (NVRTC with the options CuPy passes, ptxas for sm_90, every launch checked
against its kernel's signature and shared memory) is tests/test_cuda_launch_contract.py;
kernels run against the reference in the per-family tests when a GPU is present.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
SOURCE_PARAMS = [pytest.param(p, id=p.name) for p in SOURCES]


def test_sources_exist():
    assert (ROOT / "csrc" / "cuda" / "solu.cu") in SOURCES


@pytest.mark.parametrize("src", SOURCE_PARAMS)
def test_compiles_with_nvcc(src, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found")
    out = subprocess.run([nvcc, "-c", "-arch=sm_90", "-std=c++17", f"-I{src.parent}", str(src),
                          "-o", str(tmp_path / (src.stem + ".o"))],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
