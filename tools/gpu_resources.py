"""Compile every GPU kernel for sm_90 (H100/H200) without a GPU and check what it asks of the card.

Triton: a fake CUDA driver is made active (target sm_90, 132 SMs, 232,448 B of shared memory per
block, the H100/H200 opt-in limit) and the public ops run on CPU tensors through the triton
backend, so every kernel is compiled (TTIR -> PTX -> ptxas) with exactly the launch configuration
its launcher chooses; launches are recorded, never run. Each compiled kernel is checked:

- shared memory (ptxas static + Triton's dynamic) <= 232,448 B: the launch would fail with
  OutOfResources otherwise;
- grid x <= 2^31 - 1 and grid y, z <= 65,535 (CUDA's limits);
- no TF32 instruction in a kernel whose float32 results promise float32 accuracy;
- tensor-core (wgmma) instructions where the kernel's speed depends on them.

Registers, stack frame, spill bytes and compile time are recorded (docs/gpu-resources.md).

CUDA: every csrc/cuda/*.cu through NVRTC with the options pyinterp's run-time loader gives
CuPy, then ``ptxas -v`` for sm_90: registers, static shared memory, stack and spills per kernel.
(The dynamic shared memory each CUDA launcher asks for is checked against these static sizes in
tests/test_cuda_launch_contract.py.)

    python tools/gpu_resources.py [--triton] [--cuda] [--quick] [--jobs N] [--json FILE]
    python tools/gpu_resources.py --doc docs/gpu-resources.md A.json [B.json ...]

Exit status 1 when a check fails. Runs with whatever triton is importable: CI runs it with
the newest and the oldest supported version (pyproject's ``triton>=`` floor).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]

SMEM_LIMIT = 232_448      # per block, after opting in (H100/H200: 227 KB)
SMEM_DEFAULT = 49_152     # per block without opting in (static + dynamic)
SMS = 132                 # H200 / H100 SXM multiprocessors
GRID_X_MAX = 2**31 - 1
GRID_YZ_MAX = 65_535


@dataclass
class Record:
    backend: str            # "triton" | "cuda"
    kernel: str
    case: str               # the op call (or source file) that compiled it
    config: str             # constexprs / warps / stages (triton), "" (cuda)
    shared: int             # bytes per block: static + dynamic as launched
    regs: int
    stack: int              # bytes of stack frame per thread
    spill_stores: int
    spill_loads: int
    seconds: float = 0.0    # ptxas time
    case_seconds: float = 0.0  # the whole case (compiling all its kernels), wall
    grids: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    problems: list = field(default_factory=list)


_PTXAS_USED = re.compile(r"Used (\d+) registers")
_PTXAS_SMEM = re.compile(r"(\d+) bytes smem")
_PTXAS_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_ENTRY = re.compile(r"(?:Compiling entry function|Function properties for) '?([\w$]+)'?")


def parse_ptxas(log: str) -> dict:
    """ptxas -v output -> {function: dict(regs, smem, stack, spill_stores, spill_loads)}."""
    out: dict = {}
    current = None
    for line in log.splitlines():
        m = _PTXAS_ENTRY.search(line)
        if m:
            current = out.setdefault(m.group(1), dict(regs=0, smem=0, stack=0, spill_stores=0,
                                                      spill_loads=0))
            continue
        if current is None:
            continue
        if (m := _PTXAS_FRAME.search(line)):
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)),
                           spill_loads=int(m.group(3)))
        if (m := _PTXAS_USED.search(line)):
            current["regs"] = int(m.group(1))
            if (s := _PTXAS_SMEM.search(line)):
                current["smem"] = int(s.group(1))
    return out


# ------------------------------------------------------------------------------------------
# Triton


class _TritonProbe:
    """A fake CUDA driver for triton: compiles for sm_90, records launches, runs nothing."""

    def __init__(self):
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.backends.nvidia import compiler as nv

        self.target = GPUTarget("cuda", 90, 32)
        self.logs: dict[bytes, str] = {}     # cubin -> ptxas -v log
        self.launches: list = []             # (Launcher, grid)
        self.pending = None                  # the launcher whose binary is being loaded
        probe = self
        original = nv.CUDABackend.make_cubin

        def make_cubin(backend_self, src, metadata, opt, capability):
            from triton import knobs

            buf = io.StringIO()
            old = knobs.nvidia.dump_ptxas_log
            knobs.nvidia.dump_ptxas_log = True
            t0 = time.perf_counter()
            try:
                with contextlib.redirect_stdout(buf):
                    cubin = original(backend_self, src, metadata, opt, capability)
            finally:
                knobs.nvidia.dump_ptxas_log = old
            probe.logs[cubin] = (buf.getvalue(), time.perf_counter() - t0, src)
            return cubin

        nv.CUDABackend.make_cubin = make_cubin

        class Utils:
            def get_device_properties(self, device):
                return {"max_shared_mem": SMEM_LIMIT, "multiprocessor_count": SMS,
                        "max_num_regs": 65536, "warpSize": 32, "sm_clock_rate": 1_980_000,
                        "mem_clock_rate": 3_201_000, "mem_bus_width": 6144}

            def load_binary(self, name, cubin, shared, device):
                probe.pending.cubin = cubin  # _init_handles makes the launcher, then loads
                log, _, _ = probe.logs.get(cubin, ("", 0.0, ""))
                info = parse_ptxas(log).get(name, {})
                return (object(), object(), info.get("regs", 0), info.get("spill_stores", 0), 1024)

            def unload_module(self, module):
                pass

        class Launcher:
            def __init__(self, src, metadata):
                self.metadata = metadata
                self.constexprs = _constexprs(src)
                self.cubin = b""
                probe.pending = self

            def __call__(self, gx, gy, gz, stream, function, *rest):
                probe.launches.append((self, (gx, gy, gz)))

        class Driver:
            def __init__(self):
                self.utils = Utils()
                self.launcher_cls = Launcher

            def get_current_target(self):
                return probe.target

            def get_current_device(self):
                return 0

            def set_current_device(self, device):
                pass

            def get_current_stream(self, device=None):
                return 0

            def get_device_capability(self, device=None):
                return (9, 0)

            def get_active_torch_device(self):
                import torch
                return torch.device("cpu")

            def get_device_interface(self):
                import torch
                return torch.cuda

            def map_python_to_cpp_type(self, ty):
                return ty

            @staticmethod
            def is_active():
                return True

        sys.modules["triton.runtime.driver"].driver.set_active(Driver())
        self.triton_version = triton.__version__

    def records(self, case: str) -> list[Record]:
        """Records for the launches since the last call, one per distinct compiled kernel."""
        seen: dict[tuple, Record] = {}
        for launcher, grid in self.launches:
            md = launcher.metadata
            key = (md.name, md.hash)
            rec = seen.get(key)
            if rec is None:
                log, secs, ptx = self.logs.get(launcher.cubin, ("", 0.0, ""))
                rec = self._record(md, launcher.constexprs, case, log, secs, ptx)
                seen[key] = rec
            if list(grid) not in rec.grids:
                rec.grids.append(list(grid))
        self.launches.clear()
        for rec in seen.values():
            for gx, gy, gz in rec.grids:
                if gx > GRID_X_MAX or gy > GRID_YZ_MAX or gz > GRID_YZ_MAX:
                    rec.problems.append(f"grid ({gx}, {gy}, {gz}) exceeds CUDA's limits "
                                        f"(x <= {GRID_X_MAX}, y, z <= {GRID_YZ_MAX})")
        return list(seen.values())

    def _record(self, md, constexprs, case, log, secs, ptx) -> Record:
        info = parse_ptxas(log).get(md.name, {})
        static = info.get("smem", 0)
        config = ", ".join(f"{k}={v}" for k, v in constexprs.items())
        config = (config + ", " if config else "") + f"warps={md.num_warps}, stages={md.num_stages}"
        rec = Record("triton", md.name, case, config, static + md.shared, info.get("regs", 0),
                     info.get("stack", 0), info.get("spill_stores", 0), info.get("spill_loads", 0),
                     round(secs, 2))
        if rec.shared > SMEM_LIMIT:
            rec.problems.append(f"shared memory {rec.shared} B > {SMEM_LIMIT} B per block")
        if "tf32" in ptx:
            rec.notes.append("tf32")
            if "allow_tf32" not in case:
                rec.problems.append("TF32 instructions: float32 results would carry ~1e-3 "
                                    "relative error (the caller did not allow TF32)")
        if "wgmma" in ptx:
            rec.notes.append("wgmma")
        elif re.search(r"\bmma\.sync", ptx):
            rec.notes.append("mma")
        wants_wgmma = (md.name in ("_stats_kernel", "_pattern_kernel") and (
            re.search(r"(bfloat16|float16) D=", case) or "allow_tf32" in case)) or (
            md.name == "_topk_partial_kernel" and re.search(r"(bfloat16|float16) k=", case)
            and "BLOCK_M=64" in config)
        if wants_wgmma and "wgmma" not in rec.notes:
            rec.problems.append("no wgmma: the GEMM is not on Hopper's tensor cores")
        return rec


def _constexprs(src) -> dict:
    """The constexpr arguments of a compiled ASTSource, by name (tuples of argument indices as
    keys in triton 3.x)."""
    names = getattr(getattr(src, "fn", None), "arg_names", [])
    out = {}
    for key, value in (getattr(src, "constants", None) or {}).items():
        idx = key[0] if isinstance(key, tuple) and len(key) == 1 else key
        name = names[idx] if isinstance(idx, int) and idx < len(names) else str(idx)
        if value is None or isinstance(value, (bool, int, float, str)) or hasattr(value, "name"):
            out[name] = getattr(value, "name", value)
    return out


def _fake_torch_cuda():
    """Launchers read the SM count of the tensors' device: answer for an H200."""
    import torch

    props = SimpleNamespace(multi_processor_count=SMS, name="sm_90 (compile-only probe)", major=9,
                            minor=0, total_memory=141 * 2**30, L2_cache_size=60 * 2**20,
                            shared_memory_per_block_optin=SMEM_LIMIT)
    torch.cuda.get_device_properties = lambda *a, **k: props


def _route_ops_to_triton():
    """The public ops pick the triton backend for these CPU tensors (compiled, not interpreted)."""
    from pyinterp import _backend

    _backend.resolve = lambda op, supported, *tensors, name=None: "triton"


# The launch configurations the ops choose depend on dtype, k (-> KP, BLOCK_N), head dim,
# number of directions P and row width (-> BLOCK, SINGLE, warps). One case per value at each
# boundary the launchers branch on; each case runs forward and backward.


def _sae_cases(quick):
    import torch

    from pyinterp import ops

    def encode(dtype, k, d_in=96, d_sae=700, n=40, backward=True, kind="topk"):
        def run():
            g = torch.Generator().manual_seed(0)
            x = torch.randn(n, d_in, generator=g).to(dtype).requires_grad_(backward)
            W = torch.randn(d_in, d_sae, generator=g).to(dtype).requires_grad_(backward)
            be = torch.zeros(d_sae, dtype=dtype, requires_grad=backward)
            bd = torch.zeros(d_in, dtype=dtype, requires_grad=backward)
            if kind == "topk":
                v, i = ops.topk_encode(x, W, be, bd, k)
            else:
                v, i = ops.threshold_encode(x, W, be, bd, 0.0)
            if backward:
                v.float().sum().backward()
        return run

    def decode(dtype, k, d=96, d_sae=700, n=40, deterministic=False):
        def run():
            g = torch.Generator().manual_seed(0)
            v = torch.rand(n, k, generator=g).to(dtype).requires_grad_()
            i = torch.randint(0, d_sae, (n, k), generator=g)
            W = torch.randn(d_sae, d, generator=g).to(dtype).requires_grad_()
            b = torch.zeros(d, dtype=dtype, requires_grad=True)
            ops.sparse_decode(v, i, W, b, deterministic=deterministic).float().sum().backward()
        return run

    cases = []
    # KP = next_pow2(k): 1 (k=1), 64, 128 and 256 (k=129..256, the fused limit) bound BLOCK_N
    # and the running top-k's registers.
    ks = (1, 64, 256) if quick else (1, 64, 128, 256)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for k in ks:
            if quick and dtype == torch.float16 and k != 64:
                continue
            cases.append((f"topk_encode {_dt(dtype)} k={k}", encode(dtype, k, backward=k == 64)))
        cases.append((f"sparse_decode {_dt(dtype)} k=64 d=96", decode(dtype, 64)))
    cases.append(("sparse_decode float32 k=64 d=300 deterministic",
                  decode(torch.float32, 64, d=300, deterministic=True)))
    cases.append(("topk_encode bfloat16 k=64 N=0", encode(torch.bfloat16, 64, n=0, backward=False)))
    return cases


def _attention_cases(quick):
    import torch

    from pyinterp import ops

    def stats(dtype, D, rules=("prev", "first", "duplicate", "induction"), B=1, H=2, T=130,
              pattern=False, kpm=False, tf32=False):
        def run():
            g = torch.Generator().manual_seed(0)
            q = torch.randn(B, H, T, D, generator=g).to(dtype)
            k = torch.randn(B, H, T, D, generator=g).to(dtype)
            tok = torch.randint(0, 7, (B, T), generator=g)
            mask = torch.zeros(B, T, dtype=torch.bool) if kpm else None
            before = torch.get_float32_matmul_precision()
            torch.set_float32_matmul_precision("high" if tf32 else "highest")
            try:
                ops.attention_stats(q, k, tok, rules=rules, key_padding_mask=mask)
                if pattern:
                    ops.attention_pattern(q, k, heads=[0], queries=(0, 64))
            finally:
                torch.set_float32_matmul_precision(before)
        return run

    cases = []
    # BLOCK_D = next_pow2(d_head): 64 / 128 / 256 (the 16-bit tiles take 8 warps above 128)
    dims = {torch.bfloat16: (64, 128, 256), torch.float16: (128,), torch.float32: (128, 256)}
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for D in (dims[dtype] if quick else (64, 128, 256)):
            cases.append((f"attention_stats {_dt(dtype)} D={D}", stats(dtype, D, pattern=D == 128)))
    cases.append(("attention_stats float32 D=80 prev-only padded",
                  stats(torch.float32, 80, rules=("prev",), kpm=True)))
    cases.append(("attention_stats float64 D=128", stats(torch.float64, 128)))
    cases.append(("attention_stats float32 D=128 allow_tf32", stats(torch.float32, 128, tf32=True)))
    # grid: B*H above the 65,535 limit of grid y
    cases.append(("attention_stats bfloat16 D=64 B*H=65600 T=1",
                  stats(torch.bfloat16, 64, rules=("prev",), B=16400, H=4, T=1)))
    return cases


def _persona_cases(quick):
    import torch

    from pyinterp import ops

    def project(dtype, P, reduce, D=200):
        def run():
            g = torch.Generator().manual_seed(0)
            layers = [torch.randn(2, 33, D, generator=g).to(dtype) for _ in range(2)]
            vec = torch.randn(P, D, generator=g).to(dtype)
            ops.persona_project(layers, vec, reduce=reduce)
        return run

    cases = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for reduce in ("mean", "last"):
            cases.append((f"persona_project {_dt(dtype)} P=3 reduce={reduce}", project(dtype, 3, reduce)))
        # reduce="none": BLOCK_P = next_pow2(P) up to 16 (P 1..16)
        for P in ((1, 9, 16) if quick else (1, 2, 3, 5, 8, 9, 16)):
            cases.append((f"persona_project {_dt(dtype)} P={P} reduce=none", project(dtype, P, "none")))
    return cases


def _solu_cases(quick):
    import torch

    from pyinterp import ops

    def solu(dtype, d, rows=3):
        def run():
            g = torch.Generator().manual_seed(0)
            x = torch.randn(rows, d, generator=g).to(dtype).requires_grad_()
            w = torch.ones(d, dtype=dtype, requires_grad=True)
            b = torch.zeros(d, dtype=dtype, requires_grad=True)
            ops.solu(x).float().sum().backward()
            ops.solu_ln(x, w, b).float().sum().backward()
        return run

    cases = []
    # block_config: BLOCK = next_pow2(d) up to 8192 (then multi-block); warps 4 (<= 1024),
    # 8 (<= 4096), 16 beyond.
    widths = (1024, 4097, 8193) if quick else (1024, 1025, 4096, 4097, 8192, 8193)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for d in widths:
            if quick and dtype != torch.float32 and d != 8193:
                continue
            cases.append((f"solu+solu_ln {_dt(dtype)} d={d}", solu(dtype, d)))
    return cases


def _multi_decode_cases(quick):
    import torch

    from pyinterp import ops
    from pyinterp.ops.multi_decode import clt_decoder_map, prefix_ranges, shared_decoder_map

    def decode(dtype, kind, d=96, k=32, n=40, deterministic=False):
        def run():
            g = torch.Generator().manual_seed(0)
            if kind == "clt":
                L, d_src = 4, 200
                W = torch.randn(L * (L + 1) // 2, d_src, d, generator=g)
                kw = dict(decoder_map=clt_decoder_map(L))
                total = L * d_src
            else:
                W = torch.randn(1, 700, d, generator=g)
                kw = dict(decoder_map=shared_decoder_map(3), ranges=prefix_ranges([50, 300, 700]))
                total = 700
            W = W.to(dtype).requires_grad_()
            v = torch.rand(n, k, generator=g).to(dtype).requires_grad_()
            i = torch.randint(0, total, (n, k), generator=g)
            out = ops.multi_decode(v, i, W, deterministic=deterministic, **kw)
            out.float().sum().backward()
        return run

    cases = []
    for dtype in (torch.float32, torch.bfloat16) if quick else (torch.float32, torch.bfloat16,
                                                                 torch.float16):
        cases.append((f"multi_decode {_dt(dtype)} clt", decode(dtype, "clt")))
    cases.append(("multi_decode float32 matryoshka d=300 deterministic",
                  decode(torch.float32, "matryoshka", d=300, deterministic=True)))
    return cases


FAMILIES = {"sae": _sae_cases, "attention": _attention_cases, "persona": _persona_cases,
            "solu": _solu_cases, "multi_decode": _multi_decode_cases}


def _dt(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _triton_worker(args) -> tuple[list[dict], str]:
    """Runs some cases in a fresh process (own fake driver, own empty compile cache)."""
    families, quick, index, jobs, pattern = args
    os.environ["TRITON_INTERPRET"] = "0"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    cache = tempfile.mkdtemp(prefix="pyinterp-gpu-resources-")
    os.environ["TRITON_CACHE_DIR"] = cache  # compile for real every time: nothing cached
    sys.path.insert(0, str(ROOT))
    try:
        import warnings

        warnings.filterwarnings("ignore")
        probe = _TritonProbe()
        _fake_torch_cuda()
        _route_ops_to_triton()
        cases = [c for f in families for c in FAMILIES[f](quick) if re.search(pattern, c[0])]
        out = []
        for n, (name, run) in enumerate(cases):
            if n % jobs != index:
                continue
            t0 = time.perf_counter()
            try:
                run()
            except Exception as exc:  # the check reports it; the other cases still run
                probe.launches.clear()
                rec = Record("triton", "-", name, "", 0, 0, 0, 0, 0)
                msg = f"{type(exc).__name__}: {exc}".splitlines()
                rec.problems.append(" ".join(msg[:1] + msg[-3:])[:600])
                out.append(asdict(rec))
                continue
            recs = probe.records(name)
            for r in recs:
                r.case_seconds = round(time.perf_counter() - t0, 1)
            out += [asdict(r) for r in recs]
        return out, probe.triton_version
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def run_triton(families, quick=False, jobs=1, pattern="") -> tuple[list[dict], str]:
    if jobs <= 1:
        return _triton_worker((families, quick, 0, 1, pattern))
    with ProcessPoolExecutor(jobs) as pool:
        parts = list(pool.map(_triton_worker,
                              [(families, quick, i, jobs, pattern) for i in range(jobs)]))
    return [r for recs, _ in parts for r in recs], parts[0][1]


# ------------------------------------------------------------------------------------------
# CUDA (NVRTC + ptxas)


class _Captured(Exception):
    pass


def cupy_nvrtc_options(filename: str) -> list[str]:
    """The NVRTC options CuPy passes when pyinterp's run-time loader (runtime.module) compiles
    csrc/cuda/<filename> for an sm_90 card: CuPy's own compile function is run with the device
    queries answered for sm_90 and stopped at the NVRTC call, whose options are returned."""
    import torch
    from cupy.cuda import compiler

    sys.path.insert(0, str(ROOT))
    from pyinterp.backends.cuda import runtime

    captured: list = []
    saved = (compiler._NVRTCProgram.compile, compiler._get_arch,
             compiler._get_arch_for_options_for_nvrtc, torch.cuda.get_device_capability)
    original = saved[0]

    def compile_(self, options=(), log_stream=None):
        if not self.src.strip():  # CuPy's version probe (an empty file): let it compile
            return original(self, options, log_stream)
        captured.append(list(options))
        raise _Captured

    compiler._NVRTCProgram.compile = compile_
    compiler._get_arch = lambda: "90"
    compiler._get_arch_for_options_for_nvrtc = lambda arch=None: ("-arch=sm_90", "cubin")
    torch.cuda.get_device_capability = lambda *a, **k: (9, 0)
    cache = tempfile.mkdtemp(prefix="pyinterp-cupy-")
    old_cache = os.environ.get("CUPY_CACHE_DIR")
    os.environ["CUPY_CACHE_DIR"] = cache  # nothing cached: CuPy must reach NVRTC
    try:
        mod = runtime.module.__wrapped__(filename)  # the RawModule runtime.module builds
        try:
            compiler._compile_module_with_cache(mod.code, mod.options, backend=mod.backend)
        except _Captured:
            pass
    finally:
        (compiler._NVRTCProgram.compile, compiler._get_arch,
         compiler._get_arch_for_options_for_nvrtc, torch.cuda.get_device_capability) = saved
        if old_cache is None:
            os.environ.pop("CUPY_CACHE_DIR", None)
        else:
            os.environ["CUPY_CACHE_DIR"] = old_cache
        shutil.rmtree(cache, ignore_errors=True)
    if not captured:
        raise RuntimeError(f"CuPy did not reach NVRTC for {filename}")
    return captured[0]


def cuda_kernel_resources(filename: str) -> tuple[dict, list[str], float]:
    """({kernel: ptxas info}, options, seconds): csrc/cuda/<filename> compiled by NVRTC with
    CuPy's options plus ``--ptxas-options=-v`` (NVRTC's own ptxas, as on the card)."""
    from cupy_backends.cuda.libs import nvrtc

    options = cupy_nvrtc_options(filename)
    src = ROOT / "csrc" / "cuda" / filename
    t0 = time.perf_counter()
    prog = nvrtc.createProgram(src.read_text(), filename, [], [])
    try:
        nvrtc.compileProgram(prog, options + ["--ptxas-options=-v"])
    except Exception as exc:
        raise RuntimeError(f"NVRTC failed on {filename}: {nvrtc.getProgramLog(prog)}") from exc
    log = nvrtc.getProgramLog(prog)
    log = log.decode() if isinstance(log, bytes) else log
    return parse_ptxas(log), options, time.perf_counter() - t0


def run_cuda() -> tuple[list[dict], str]:
    out, opts = [], ""
    for src in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
        try:
            infos, options, secs = cuda_kernel_resources(src.name)
        except Exception as exc:
            out.append(asdict(Record("cuda", "-", src.name, "", 0, 0, 0, 0, 0,
                                     problems=[str(exc)[-2000:]])))
            continue
        opts = " ".join(o for o in options if not o.startswith("-I"))
        for name, info in sorted(infos.items()):
            rec = Record("cuda", name, src.name, "", info["smem"], info["regs"], info["stack"],
                         info["spill_stores"], info["spill_loads"], round(secs, 2))
            if info["smem"] > SMEM_DEFAULT:
                rec.problems.append(f"static shared memory {info['smem']} B > {SMEM_DEFAULT} B")
            out.append(asdict(rec))
    return out, opts


# ------------------------------------------------------------------------------------------
# report


def problems(records: list[dict]) -> list[str]:
    return [f"{r['backend']} {r['kernel']} [{r['case']}]: {p}" for r in records for p in r["problems"]]


def _table(records: list[dict]) -> list[str]:
    lines = ["| kernel | case | config | shared B | regs | stack B | spill st/ld B | compile s | notes |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for r in records:
        notes = ", ".join(r["notes"] + [f"**{p}**" for p in r["problems"]])
        lines.append(f"| {r['kernel']} | {r['case']} | {r['config']} | {r['shared']} | {r['regs']} | "
                     f"{r['stack']} | {r['spill_stores']}/{r['spill_loads']} | {r['seconds']} | {notes} |")
    return lines


def _summary(rep: dict) -> list[str]:
    recs = rep["records"]
    real = [r for r in recs if r["kernel"] != "-"]
    lines = [f"- {len(real)} kernel compilations, {len({r['kernel'] for r in real})} kernels; "
             f"largest shared memory {max((r['shared'] for r in real), default=0):,} B; "
             f"{sum(bool(r['problems']) for r in recs)} with a problem."]
    spills = [r for r in real if r["spill_stores"]]
    if spills:
        worst = sorted(spills, key=lambda r: -r["spill_stores"])[:6]
        lines.append("- spills (bytes of spill stores per thread): " + "; ".join(
            f"{r['kernel']} [{r['case']}] {r['spill_stores']}" for r in worst)
            + (f"; {len(spills) - len(worst)} more" if len(spills) > len(worst) else ""))
    else:
        lines.append("- no spills")
    return lines


def write_doc(path: Path, reports: list[dict]) -> None:
    lines = ["# GPU kernel resources on sm_90 (H100 / H200)", "",
             "Generated by `tools/gpu_resources.py` (compile only, no GPU): a fake CUDA driver makes "
             "triton compile every kernel through its real launcher for the configurations the ops "
             "choose; the CUDA sources go through NVRTC with the options CuPy passes, plus "
             "`ptxas -v`. Regenerate:", "",
             "```",
             "python tools/gpu_resources.py --triton --jobs 2 --json t.json   # once per triton version",
             "python tools/gpu_resources.py --cuda --json c.json",
             "python tools/gpu_resources.py --doc docs/gpu-resources.md t39.json t36.json c.json",
             "```", "",
             f"Checked (a failure fails CI): shared memory per block <= {SMEM_LIMIT:,} B (the "
             "H100/H200 opt-in limit; CUDA kernels: static <= 48 KiB here, dynamic requests per "
             "launch in tests/test_cuda_launch_contract.py), grid y/z <= 65,535, no TF32 in "
             "float32 kernels unless the caller allowed it, attention scores on wgmma for "
             "bf16/fp16. Recorded: registers, stack frame and spill bytes per thread (ptxas), "
             "ptxas seconds. `notes`: `wgmma`/`mma` = tensor-core instructions in the PTX, "
             "`tf32` = TF32 math.", ""]
    for rep in reports:
        lines += [f"## {rep['title']}", ""] + _summary(rep) + [""]
    for rep in reports:
        lines += [f"## {rep['title']}: every compiled kernel", ""]
        lines += _table(rep["records"])
        lines.append("")
    path.write_text("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--triton", action="store_true", help="compile the Triton kernels")
    p.add_argument("--cuda", action="store_true", help="compile the CUDA kernels")
    p.add_argument("--families", default=",".join(FAMILIES), help="triton op families")
    p.add_argument("--quick", action="store_true", help="fewer configurations (CI's oldest-triton run)")
    p.add_argument("--jobs", type=int, default=1, help="compile in N processes")
    p.add_argument("--cases", default="", help="only the cases whose name matches this regex")
    p.add_argument("--json", type=Path, help="write the records here")
    p.add_argument("--doc", type=Path, help="write a markdown report from JSON files")
    p.add_argument("inputs", nargs="*", type=Path, help="JSON files for --doc")
    a = p.parse_args(argv)
    if a.doc:
        write_doc(a.doc, [json.loads(f.read_text()) for f in a.inputs])
        return 0
    reports = []
    if a.triton:
        t0 = time.perf_counter()
        recs, version = run_triton(a.families.split(","), a.quick, a.jobs, a.cases)
        reports.append(dict(title=f"Triton {version} (sm_90)", records=recs))
        print(f"triton {version}: {len(recs)} kernels compiled in {time.perf_counter() - t0:.0f} s")
    if a.cuda:
        t0 = time.perf_counter()
        recs, opts = run_cuda()
        reports.append(dict(title=f"CUDA (NVRTC with CuPy's options `{opts}`, sm_90)", records=recs))
        print(f"cuda: {len(recs)} kernels compiled in {time.perf_counter() - t0:.0f} s")
    for rep in reports:
        print("\n".join(_table(rep["records"])))
    if a.json:
        payload = reports[0] if len(reports) == 1 else dict(title="all", records=[r for x in reports for r in x["records"]])
        a.json.write_text(json.dumps(payload, indent=1))
    bad = [msg for rep in reports for msg in problems(rep["records"])]
    for msg in bad:
        print("PROBLEM:", msg)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
