"""Every Triton kernel, compiled for sm_90 through its real launcher, fits an H100/H200.

tools/gpu_resources.py makes a fake CUDA driver active (sm_90, 132 SMs, 232,448 B of shared
memory per block) and runs the public ops on CPU tensors through the triton backend, so each
kernel is compiled by triton + ptxas with the configuration its launcher picks for each dtype,
k, head dim, P and row width at the launchers' boundaries; launches are recorded, not run. It
fails on shared memory above the limit (OutOfResources on the card), grids beyond CUDA's
limits, or TF32 instructions in kernels that promise float32 accuracy.

This test runs it with the installed triton (CI: the newest); .ci/run runs it again with the
oldest supported version (pyproject's floor, the H200 image's triton 3.6). The CUDA kernels'
static and dynamic shared memory are checked in tests/test_cuda_launch_contract.py. Full tables:
docs/gpu-resources.md.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_triton_kernels_fit_sm90_through_their_launchers():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_resources.py"), "--triton",
                          "--quick", "--jobs", "2"], capture_output=True, text=True, env=env,
                         cwd=str(ROOT), timeout=1500)
    problems = [line for line in out.stdout.splitlines() if line.startswith("PROBLEM")]
    assert out.returncode == 0 and not problems, "\n".join(problems) or out.stderr[-4000:]
    assert "kernels compiled" in out.stdout
