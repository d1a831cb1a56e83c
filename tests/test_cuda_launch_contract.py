"""Every launch the CUDA backend makes, checked against the kernel it launches, without a GPU.

The public ops run on CPU tensors with the cuda backend's launchers, but ``runtime.launch`` is
replaced by a recorder: nothing runs, and each launch is checked against

- the kernel's C signature (csrc/cuda/*.cu after the preprocessor): argument count, the dtype of
  every tensor passed for a typed pointer (a float32 buffer handed to a ``bf16_t*`` parameter is
  how issue 15's defect 2 wrote garbage gradients), the numpy type of every scalar;
- CUDA's launch limits: grid x <= 2^31 - 1, grid y and z <= 65,535, <= 1024 threads per block;
- shared memory: the dynamic bytes requested <= the kernel's dynamic limit (48 KiB minus its
  static shared memory unless the launcher opted in; at most 232,448 B minus static on an
  H100/H200), with the static bytes from NVRTC's ptxas for sm_90 (tools/gpu_resources.py).
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CUDA_SRC = ROOT / "csrc" / "cuda"
SMEM_OPTIN = 232_448
SMEM_DEFAULT = 49_152

pytest.importorskip("cupy_backends.cuda.libs.nvrtc", reason="cupy is not installed")


def _tool():
    spec = importlib.util.spec_from_file_location("gpu_resources", ROOT / "tools" / "gpu_resources.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_resources", mod)
    spec.loader.exec_module(mod)
    return mod


@lru_cache(maxsize=None)
def static_smem(filename: str) -> dict:
    """{kernel: static shared bytes} from NVRTC's ptxas for sm_90, with CuPy's options."""
    infos, _, _ = _tool().cuda_kernel_resources(filename)
    return {name: info["smem"] for name, info in infos.items()}


@pytest.fixture(scope="module", autouse=True)
def _nvrtc_and_static_sizes():
    from cupy_backends.cuda.libs import nvrtc

    try:
        nvrtc.getVersion()
    except Exception as exc:  # pragma: no cover - depends on the install
        pytest.skip(f"the NVRTC library cannot be loaded here ({exc})")
    for src in CUDA_SRC.glob("*.cu"):  # before the fixture below replaces runtime.module
        static_smem(src.name)


# ---------------------------------------------------------------------------------- signatures

_ELEM = {"float": torch.float32, "double": torch.float64, "f16_t": torch.float16,
         "bf16_t": torch.bfloat16, "i64": torch.int64, "long long": torch.int64, "int": torch.int32,
         "unsigned char": torch.uint8}
_SCALAR = {"int": np.int32, "i64": np.int64, "long long": np.int64, "float": np.float32,
           "double": np.float64}


def _base_type(t: str) -> str:
    t = t.replace("const", "").replace("__restrict__", "").replace("*", "").strip()
    m = re.fullmatch(r"Acc<\s*(\w+)\s*>::type", t)
    if m:
        return "double" if m.group(1) == "double" else "float"
    return " ".join(t.split())


@lru_cache(maxsize=None)
def signatures(filename: str) -> dict:
    """{kernel: [(name, kind, type)]} with kind "ptr" or "scalar", from the preprocessed source."""
    cpp = shutil.which("cpp")
    if cpp is None:
        pytest.skip("no C preprocessor (cpp) to read the kernel signatures")
    text = subprocess.run([cpp, "-P", "-x", "c++", f"-I{CUDA_SRC}", str(CUDA_SRC / filename)],
                          capture_output=True, text=True, check=True).stdout
    out = {}
    for name, params in re.findall(r"__global__\s+void\s+(\w+)\s*\(([^)]*)\)", text):
        args = []
        for p in params.split(","):
            p = " ".join(p.split())
            m = re.fullmatch(r"(.*?)(\w+)", p)
            ctype, pname = m.group(1), m.group(2)
            args.append((pname, "ptr" if "*" in ctype else "scalar", _base_type(ctype)))
        out[name] = args
    return out


# ------------------------------------------------------------------------------ fake runtime

class Ptr:
    def __init__(self, t):
        self.t = t


class FakeKernel:
    def __init__(self, filename, name):
        self.filename, self.name = filename, name
        self.shared_size_bytes = static_smem(filename)[name]
        self._max_dynamic = SMEM_DEFAULT - self.shared_size_bytes

    @property
    def max_dynamic_shared_size_bytes(self):
        return self._max_dynamic

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value):
        if value + self.shared_size_bytes > SMEM_OPTIN:
            raise RuntimeError(f"cudaFuncSetAttribute: {value} + static {self.shared_size_bytes} "
                               f"> {SMEM_OPTIN}")
        self._max_dynamic = value


class FakeModule:
    def __init__(self, filename):
        self.filename = filename
        self.kernels = {}

    def get_function(self, name):
        if name not in signatures(self.filename):
            raise AttributeError(f"{self.filename} has no kernel {name}")
        return self.kernels.setdefault(name, FakeKernel(self.filename, name))


def check_launch(fn, grid, block, args, shared_mem) -> list[str]:
    errors = []
    sig = signatures(fn.filename)[fn.name]
    where = f"{fn.name}{tuple(grid)}x{tuple(block)}"
    if len(args) != len(sig):
        return [f"{where}: {len(args)} arguments for {len(sig)} parameters"]
    for value, (pname, kind, ctype) in zip(args, sig):
        if kind == "ptr":
            if not isinstance(value, Ptr):
                errors.append(f"{where}: {pname} ({ctype}*) got {type(value).__name__}, not a tensor pointer")
            elif value.t is not None:
                want = _ELEM[ctype]
                got = value.t.dtype
                if got != want and not (want == torch.uint8 and got == torch.bool):
                    errors.append(f"{where}: {pname} is {ctype}* but gets a {got} tensor")
        else:
            want = _SCALAR[ctype]
            if type(value) is not want:
                errors.append(f"{where}: {pname} is {ctype} but gets {type(value).__name__}")
    gx, gy, gz = (tuple(grid) + (1, 1))[:3]
    if not (1 <= gx <= 2**31 - 1 and 1 <= gy <= 65535 and 1 <= gz <= 65535):
        errors.append(f"{where}: grid outside CUDA's limits (x <= 2^31-1, y, z <= 65535, all >= 1)")
    threads = int(np.prod(block))
    if not 1 <= threads <= 1024:
        errors.append(f"{where}: {threads} threads per block")
    if shared_mem > fn.max_dynamic_shared_size_bytes:
        errors.append(f"{where}: {shared_mem} B of dynamic shared memory > the kernel's limit "
                      f"{fn.max_dynamic_shared_size_bytes} B (static {fn.shared_size_bytes} B; "
                      "opt in with max_dynamic_shared_size_bytes)")
    return errors


class _Context:
    def __init__(self, *args):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture
def cuda_contract(monkeypatch):
    """Route the ops to the cuda launchers on CPU tensors; the real ``runtime.launch`` runs (its
    shared-memory opt-in included) down to CuPy's kernel call, which records and checks."""
    from pyinterp import _backend
    from pyinterp.backends.cuda import runtime

    modules = {}
    launches, errors, named = [], [], []

    def call(fn, grid, block, args, shared_mem=0):
        launches.append((fn.name, tuple(grid), tuple(block), shared_mem))
        named.append((fn.name, {p[0]: a for p, a in zip(signatures(fn.filename)[fn.name], args)}))
        errors.extend(check_launch(fn, grid, block, args, shared_mem))

    monkeypatch.setattr(FakeKernel, "__call__", call, raising=False)
    fake_cupy = SimpleNamespace(cuda=SimpleNamespace(ExternalStream=_Context, Device=_Context))
    monkeypatch.setattr(runtime, "_cupy", lambda: fake_cupy)
    monkeypatch.setattr(runtime, "module", lambda filename, device=None:
                        modules.setdefault(filename, FakeModule(filename)))
    monkeypatch.setattr(runtime, "ptr", lambda t: Ptr(t))
    monkeypatch.setattr(_backend, "resolve", lambda op, supported, *t, name=None: "cuda")
    props = SimpleNamespace(multi_processor_count=132, major=9, minor=0,
                            shared_memory_per_block_optin=SMEM_OPTIN)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a, **k: props)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *a: SimpleNamespace(cuda_stream=0))
    return SimpleNamespace(launches=launches, errors=errors, args=named)


def _assert_clean(contract):
    assert contract.launches, "no kernel was launched"
    assert not contract.errors, "\n".join(dict.fromkeys(contract.errors))


DTYPES = [pytest.param(d, id=str(d).replace("torch.", ""))
          for d in (torch.float32, torch.bfloat16, torch.float16, torch.float64)]


# ----------------------------------------------------------------------------------- solu

# Row widths around the shared-memory row cache's limits: the old 48 KiB cut (12,288 float32
# accumulators) and the 227 KB opt-in (58,112 minus the static bytes); float64 halves both.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [1, 33, 1000, 6100, 6144, 12224, 12288, 12289, 58000, 70000])
def test_solu_launches(cuda_contract, dtype, d):
    from pyinterp import ops

    x = torch.randn(3, d, dtype=dtype, requires_grad=True)
    w = torch.ones(d, dtype=dtype, requires_grad=True)
    b = torch.zeros(d, dtype=dtype, requires_grad=True)
    ops.solu(x).sum().backward()
    ops.solu_ln(x, w, b).sum().backward()
    _assert_clean(cuda_contract)


def test_solu_caches_rows_up_to_the_optin_limit(cuda_contract):
    """The forward row cache (dynamic shared memory) is used beyond 48 KiB (H100/H200: 227 KB)."""
    from pyinterp import ops

    ops.solu(torch.randn(2, 20000))
    _assert_clean(cuda_contract)
    fwd = [smem for name, _, _, smem in cuda_contract.launches if name.startswith("solu_fwd")]
    assert fwd and fwd[0] == 20000 * 4


# ------------------------------------------------------------------------------------ sae

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["topk", "threshold", "batchtopk"])
def test_sae_encoder_launches(cuda_contract, dtype, kind):
    from pyinterp import ops

    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 24, generator=g, dtype=dtype, requires_grad=True)
    W = torch.randn(24, 300, generator=g, dtype=dtype, requires_grad=True)
    be = torch.zeros(300, dtype=dtype, requires_grad=True)
    bd = torch.zeros(24, dtype=dtype, requires_grad=True)
    if kind == "topk":
        v, _ = ops.topk_encode(x, W, be, bd, 40)
    elif kind == "threshold":
        v, _ = ops.threshold_encode(x, W, be, bd, 0.0)
    else:
        v, _ = ops.batchtopk_encode(x, W, be, bd, 5)
    v.sum().backward()
    _assert_clean(cuda_contract)


@pytest.mark.parametrize("deterministic", [False, True])
def test_sae_encoder_backward_reads_and_writes_whole_rows(cuda_contract, deterministic):
    """grad x gathers W_enc's columns and grad W_enc scatters into them: the launchers hand the
    kernels row-major operands (feature stride 1, consecutive threads on consecutive bytes)
    instead of strided columns (one 32-byte sector per element)."""
    from pyinterp import ops

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 24, generator=g, dtype=torch.bfloat16, requires_grad=True)
    W = torch.randn(24, 300, generator=g, dtype=torch.bfloat16, requires_grad=True)
    be = torch.zeros(300, dtype=torch.bfloat16, requires_grad=True)
    bd = torch.zeros(24, dtype=torch.bfloat16, requires_grad=True)
    torch.use_deterministic_algorithms(deterministic)
    try:
        # threshold selection runs in torch, so the indices are real (no kernel runs here)
        v, _ = ops.threshold_encode(x, W, be, bd, 0.0, max_active=32)
        v.float().sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)
    _assert_clean(cuda_contract)
    strided = [(name, int(a["sd"])) for name, a in cuda_contract.args
               if name.startswith(("sae_gather", "sae_scatter")) and int(a["sd"]) != 1]
    assert not strided, strided
    assert {n.rsplit("_", 1)[0] for n, _ in cuda_contract.args} >= {"sae_gather_acc"}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("deterministic", [False, True])
def test_sae_decode_launches(cuda_contract, dtype, deterministic):
    from pyinterp import ops

    g = torch.Generator().manual_seed(0)
    v = torch.rand(7, 16, generator=g, dtype=dtype, requires_grad=True)
    i = torch.randint(0, 300, (7, 16), generator=g)
    W = torch.randn(300, 40, generator=g, dtype=dtype, requires_grad=True)
    b = torch.zeros(40, dtype=dtype, requires_grad=True)
    ops.sparse_decode(v, i, W, b, deterministic=deterministic).sum().backward()
    _assert_clean(cuda_contract)


# ------------------------------------------------------------------------------ multi_decode

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("deterministic", [False, True])
def test_multi_decode_launches(cuda_contract, dtype, deterministic):
    from pyinterp import ops
    from pyinterp.ops.multi_decode import clt_decoder_map

    g = torch.Generator().manual_seed(0)
    v = torch.rand(7, 12, generator=g, dtype=dtype, requires_grad=True)
    i = torch.randint(0, 3 * 50, (7, 12), generator=g)
    W = torch.randn(6, 50, 40, generator=g, dtype=dtype, requires_grad=True)
    b = torch.zeros(3, 40, dtype=dtype, requires_grad=True)
    ops.multi_decode(v, i, W, b, decoder_map=clt_decoder_map(3), ranges=[(0, 150), (10, 120),
                     (0, 0)], deterministic=deterministic).sum().backward()
    _assert_clean(cuda_contract)


@pytest.mark.parametrize("dtype", DTYPES)
def test_jumprelu_select_launches(cuda_contract, dtype):
    from pyinterp import ops

    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 32, generator=g, dtype=dtype, requires_grad=True)
    W = torch.randn(32, 300, generator=g, dtype=dtype, requires_grad=True)
    be = torch.zeros(300, dtype=dtype, requires_grad=True)
    thr = torch.rand(300, generator=g)
    pre, idx = ops.jumprelu_select(x, W, be, None, thr, 0.2)
    ops.jumprelu_gate(pre, idx, thr, 0.2).sum().backward()
    _assert_clean(cuda_contract)


# ------------------------------------------------------------------------------ attention

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [16, 64, 128, 192, 256])
def test_attention_launches(cuda_contract, dtype, D):
    from pyinterp import ops

    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 70, D, generator=g, dtype=dtype)
    k = torch.randn(2, 2, 70, D, generator=g, dtype=dtype)
    tok = torch.randint(0, 5, (2, 70), generator=g)
    ops.attention_stats(q, k, tok, key_padding_mask=torch.zeros(2, 70, dtype=torch.bool))
    ops.attention_pattern(q, k, heads=[0, 3], queries=(5, 40))
    _assert_clean(cuda_contract)


def test_attention_many_heads_fit_the_grid(cuda_contract):
    """B * H = 65,600 query heads: more than grid y's 65,535."""
    from pyinterp import ops

    q = torch.randn(16400, 4, 2, 16)
    ops.attention_stats(q, q, rules=("prev",))
    ops.attention_pattern(q, q, queries=(0, 1))
    _assert_clean(cuda_contract)


# -------------------------------------------------------------------------------- persona

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduce", ["mean", "sum", "last", "none"])
def test_persona_launches(cuda_contract, dtype, reduce):
    from pyinterp import ops

    g = torch.Generator().manual_seed(0)
    layers = [torch.randn(3, 9, 40, generator=g, dtype=dtype) for _ in range(2)]
    vec = torch.randn(5, 40, generator=g, dtype=dtype)
    mask = torch.ones(3, 9, dtype=torch.bool)
    ops.persona_project(layers, vec, mask=mask, reduce=reduce)
    _assert_clean(cuda_contract)
