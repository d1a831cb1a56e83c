"""Every CUDA source in csrc/cuda compiles: with nvcc for sm_90 (where nvcc exists) and with
NVRTC using the options the run-time loader uses (where the NVRTC library exists).

The sources cannot run without a GPU; compiling them here is what catches their errors.
Kernels run against the reference in the per-family tests when a GPU is present.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
SOURCE_PARAMS = [pytest.param(p, id=p.name) for p in SOURCES]

# extern "C" kernels the SoLU launcher looks up (runtime.kernel(name, dtype))
SOLU_KERNELS = [f"{op}_{sfx}" for op in ("solu_fwd", "solu_bwd", "solu_ln_fwd", "solu_ln_bwd")
                for sfx in ("f32", "f16", "bf16", "f64")]


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


def _nvrtc():
    nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc",
                                reason="cupy is not installed (the nvcc test covers the source)")
    try:
        nvrtc.getVersion()
    except Exception as exc:  # pragma: no cover - depends on the install
        pytest.skip(f"NVRTC library unavailable ({exc}); the nvcc test covers the source")
    return nvrtc


def _nvrtc_ptx(src: Path) -> str:
    nvrtc = _nvrtc()
    prog = nvrtc.createProgram(src.read_text(), src.name, [], [])
    try:
        # the options of pyinterp.backends.cuda.runtime.module, for an sm_90 device
        nvrtc.compileProgram(prog, ["-std=c++17", "--use_fast_math", "-arch=sm_90",
                                    f"-I{src.parent}"])
    except Exception:
        pytest.fail(nvrtc.getProgramLog(prog))
    ptx = nvrtc.getPTX(prog)
    return ptx.decode() if isinstance(ptx, bytes) else ptx


@pytest.mark.parametrize("src", SOURCE_PARAMS)
def test_compiles_with_nvrtc(src):
    assert ".target sm_90" in _nvrtc_ptx(src)


def test_solu_kernel_names():
    ptx = _nvrtc_ptx(ROOT / "csrc" / "cuda" / "solu.cu")
    for name in SOLU_KERNELS:
        assert f".entry {name}(" in ptx, name
