"""Run-time compilation (CuPy/NVRTC, cached) and launch of the ``csrc/cuda`` kernels.

Kernels are ``extern "C" __global__`` functions (one per dtype, named ``<op>_<f32|f16|bf16|f64>``)
so that nvcc compile-checks the same source that NVRTC compiles here. Tensors are passed as
raw device pointers. Launchers run under ``pyinterp._common.device_guard`` (the Functions put
them there), so the current device is the tensors' device: modules are compiled and loaded per
device (its architecture, its context) and every launch goes on that device's current stream.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

DTYPE_SUFFIX = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64"}


def source_dir() -> Path:
    """Where the .cu files are: inside the installed package, else the source checkout."""
    here = Path(__file__).resolve()
    for candidate in (here.parents[2] / "csrc" / "cuda", here.parents[3] / "csrc" / "cuda"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("csrc/cuda not found next to pyinterp (broken install?)")


def _cupy():
    try:
        import cupy
    except ImportError as exc:
        raise ImportError("the cuda backend needs cupy: pip install 'pyinterp[gpu]'") from exc
    return cupy


def _include_dirs() -> list[str]:
    dirs = [str(source_dir())]
    for env in ("CUDA_PATH", "CUDA_HOME"):
        root = os.environ.get(env)
        if root and Path(root, "include").is_dir():
            dirs.append(str(Path(root, "include")))
    return dirs


def check_nvrtc() -> None:
    """Raise if NVRTC cannot be loaded (cupy imports without it)."""
    from cupy_backends.cuda.libs import nvrtc

    nvrtc.getVersion()


def _arch(device: int | None) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"-arch=sm_{major}{minor}"


@functools.lru_cache(maxsize=None)
def module(filename: str, device: int | None = None):
    """The compiled ``cupy.RawModule`` for ``csrc/cuda/<filename>``, for CUDA device ``device``
    (default: the current one): compiled for its architecture, and one module per device because
    a module is loaded into the context of the device current at its first use (cupy caches the
    compiled code on disk too)."""
    cupy = _cupy()
    code = (source_dir() / filename).read_text()
    options = (("-std=c++17", "--use_fast_math", _arch(device))
               + tuple(f"-I{d}" for d in _include_dirs()))
    return cupy.RawModule(code=code, options=options, backend="nvrtc")


def kernel(filename: str, name: str, dtype: torch.dtype | None = None):
    """The kernel ``name`` (suffixed with the dtype's tag when ``dtype`` is given) on the
    current CUDA device (the device guard makes it the tensors')."""
    full = f"{name}_{DTYPE_SUFFIX[dtype]}" if dtype is not None else name
    return module(filename, torch.cuda.current_device()).get_function(full)


def ptr(t: torch.Tensor | None) -> np.uint64:
    """A tensor's device pointer as a kernel argument (0 for None)."""
    return np.uint64(0 if t is None else t.data_ptr())


# Shared memory per block: without an opt-in, static + dynamic <= 48 KiB; a kernel may ask for
# more dynamic shared memory (up to the device's opt-in limit minus its static bytes: 227 KB on
# H100/H200) once cudaFuncSetAttribute(MaxDynamicSharedMemorySize) has raised its limit.
SMEM_DEFAULT = 48 * 1024


def max_dynamic_smem(fn) -> int:
    """The most dynamic shared memory ``fn`` can be launched with on the current device."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    optin = getattr(props, "shared_memory_per_block_optin", SMEM_DEFAULT)
    return max(optin, SMEM_DEFAULT) - fn.shared_size_bytes


def launch(fn, grid, block, args, shared_mem: int = 0) -> None:
    """Launch ``fn`` on the current CUDA device's current torch stream (the device guard of the
    ops makes the tensors' device current), opting in to more than 48 KiB of shared memory
    when asked."""
    cupy = _cupy()
    device = torch.cuda.current_device()
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream, device)
    with cupy.cuda.Device(device), stream:
        if shared_mem + fn.shared_size_bytes > SMEM_DEFAULT and \
                fn.max_dynamic_shared_size_bytes < shared_mem:
            fn.max_dynamic_shared_size_bytes = shared_mem  # cudaFuncSetAttribute, per device
        fn(tuple(grid), tuple(block), tuple(args), shared_mem=shared_mem)


def i32(v: int) -> np.int32:
    return np.int32(v)


def i64(v: int) -> np.int64:
    return np.int64(v)


def f32(v: float) -> np.float32:
    return np.float32(v)
