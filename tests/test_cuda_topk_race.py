"""The CUDA top-k epilogue (csrc/cuda/sae_topk.cuh) under adversarial thread interleavings.

The epilogue decides, inside a loop, whether every thread of the block must enter
``compact()`` (which holds barriers). If a thread can read the shared ``count`` after another
thread has already appended to it in the same round, the threads disagree and one reaches a
``__syncthreads`` alone: corrupt top-k or a hang on the GPU (issue 15, defect 5).

On CPU the exact header is compiled for the host (tests/cuda_emu/block_emu.h) and one block
runs as 256 OS threads whose barrier checks that all threads wait at the same line; OS
scheduling lets threads run far ahead of each other, which exposes the ordering bug at once.
On a GPU, a stress run compares the real kernel with an exact top-k many times over.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EMU = ROOT / "tests" / "cuda_emu"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no host C++ compiler (g++) to build the block emulator")
    exe = tmp_path_factory.mktemp("cuda_emu") / "topk_race"
    subprocess.run([cxx, "-O1", "-std=c++17", "-pthread", f"-I{EMU}", f"-I{ROOT / 'csrc' / 'cuda'}",
                    str(EMU / "topk_race.cpp"), "-o", str(exe)], check=True, timeout=300)
    return exe


# k mod 256 in 33..255 or 0 is where a warp could see count cross CAP - blockDim mid-round;
# k = 1 and k = KMAX are the ends of the range.
@pytest.mark.parametrize("k", [1, 100, 256, 1024])
def test_topk_epilogue_barriers_agree_and_result_is_exact(emulator, k):
    out = subprocess.run([str(emulator), "2", "4096", str(k), "2", str(k)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr


def _exact_topk(pre: torch.Tensor, k: int):
    """Tie rule (value desc, then column asc) by a stable sort."""
    order = torch.sort(pre, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.gather(pre, 1, order).clamp_min(0), order


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="stress run of the CUDA kernel needs a CUDA GPU")
def test_cuda_topk_stress_matches_exact_topk():
    from kernel_testing import require
    from pyinterp import ops

    require("cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    n, d_in, d_sae = 512, 64, 20000  # two column chunks of the epilogue
    for k in (33, 100, 255, 256, 300, 1000, 1024):
        for rep in range(3):
            x = torch.randn(n, d_in, device="cuda", generator=g)
            W = torch.randn(d_in, d_sae, device="cuda", generator=g) / d_in ** 0.5
            b = torch.randn(d_sae, device="cuda", generator=g) * 0.1
            v, i = ops.topk_encode(x, W, b, None, k, backend="cuda")
            pre = x.double() @ W.double() + b.double()
            ref_v, _ = _exact_topk(pre, k)
            torch.testing.assert_close(v.double(), ref_v, atol=1e-3, rtol=1e-4,
                                       msg=f"k={k} repeat {rep}")
            # chosen columns are distinct per row and hold the values reported
            assert (torch.sort(i, 1).values.diff(dim=1) > 0).all(), f"k={k}: repeated index"
            torch.testing.assert_close(torch.gather(pre, 1, i).clamp_min(0), v.double(),
                                       atol=1e-3, rtol=1e-4)
