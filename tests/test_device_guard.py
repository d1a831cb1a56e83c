"""Launchers run on the tensors' device: the Functions enter ``torch.cuda.device(<index>)`` of
their tensors around every launcher call, and the CUDA runtime compiles, loads and launches on
the current device and its current stream. Without a GPU these run against fakes of
torch.cuda / cupy (the device index chosen is what is checked); with two GPUs the last test
runs every op family on cuda:1 while cuda:0 is current."""
from __future__ import annotations

import contextlib
import types

import pytest
import torch

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="fakes torch.cuda on a CPU-only "
                            "machine; with GPUs the real devices are tested instead")



@NO_GPU
def test_device_guard_selects_the_tensors_device(monkeypatch):
    from pyinterp._common import device_guard

    entered = []

    @contextlib.contextmanager
    def fake_device(index):
        entered.append(index)
        yield

    monkeypatch.setattr(torch.cuda, "device", fake_device)
    with torch._subclasses.fake_tensor.FakeTensorMode():
        t = torch.empty(2, device="cuda:1")
    with device_guard(t):
        pass
    with device_guard(torch.empty(2)):  # CPU: no device switch
        pass
    assert entered == [1]


@NO_GPU
def test_functions_launch_under_the_guard(monkeypatch):
    """Every launcher call of a Function happens inside torch.cuda.device(<tensor's index>)."""
    from pyinterp.ops.sae.function import SparseDecode
    from pyinterp.ops.solu.function import SoLULN

    state = {"device": None, "calls": []}

    @contextlib.contextmanager
    def fake_device(index):
        state["device"] = index
        yield
        state["device"] = None

    class Launchers:
        def __getattr__(self, name):
            def launch(*args, **kwargs):
                state["calls"].append((name, state["device"]))
                x = args[0]
                if name == "solu_ln_forward":
                    return x, x, x.new_empty(x.shape[0], 3)
                return x.new_empty(x.shape[0], args[5])
            return launch

    monkeypatch.setattr(torch.cuda, "device", fake_device)
    with torch._subclasses.fake_tensor.FakeTensorMode():
        x = torch.empty(4, 8, device="cuda:1")
        SoLULN.compute(x, None, None, 1e-5, False, Launchers())
        v, i, W = torch.empty(4, 2, device="cuda:1"), torch.zeros(4, 2, dtype=torch.int64,
                                                                  device="cuda:1"), torch.empty(
            5, 8, device="cuda:1")
        SparseDecode.compute(v, i, W, None, False, Launchers())
    assert state["calls"] == [("solu_ln_forward", 1), ("gather", 1)]


@NO_GPU
def test_cuda_runtime_launches_on_the_current_device_and_its_stream(monkeypatch):
    from pyinterp.backends.cuda import runtime

    seen = {}

    class FakeDevice:
        def __init__(self, index):
            self.index = index

        def __enter__(self):
            seen.setdefault("device", []).append(self.index)

        def __exit__(self, *exc):
            return False

    class FakeStream:
        def __init__(self, ptr, device_id=None):
            seen["stream"] = (ptr, device_id)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(Device=FakeDevice,
                                                            ExternalStream=FakeStream))
    monkeypatch.setattr(runtime, "_cupy", lambda: cupy)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_stream",
                        lambda device=None: types.SimpleNamespace(cuda_stream=1000 + device))
    class FakeFunction:
        shared_size_bytes = 0
        max_dynamic_shared_size_bytes = 48 * 1024

        def __call__(self, grid, block, args, shared_mem):
            seen.update(grid=grid)

    runtime.launch(FakeFunction(), (2,), (32,), ())
    assert seen == {"device": [1], "stream": (1001, 1), "grid": (2,)}


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices (GPU-only)")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_ops_on_the_second_gpu_while_the_first_is_current(backend):
    import pyinterp
    from pyinterp import ops

    ok, why = pyinterp._backend.availability(backend)
    if not ok:
        pytest.skip(f"{backend} backend unavailable here: {why}")
    dev = torch.device("cuda:1")
    g = torch.Generator().manual_seed(0)
    x, W = torch.randn(8, 16, generator=g), torch.randn(16, 40, generator=g)
    be, bd = torch.randn(40, generator=g), torch.randn(16, generator=g)
    q, k = torch.randn(1, 2, 9, 8, generator=g), torch.randn(1, 2, 9, 8, generator=g)
    with torch.cuda.device(0):
        got = [ops.solu_ln(x.to(dev), backend=backend),
               *ops.topk_encode(*(t.to(dev) for t in (x, W, be, bd)), 5, backend=backend),
               ops.attention_stats(q.to(dev), k.to(dev), rules=("prev",), backend=backend).lse,
               ops.persona_project(x.view(2, 1, 4, 16).to(dev), W.t()[:3].to(dev),
                                   backend=backend)]
        torch.cuda.synchronize(dev)
    want = [ops.solu_ln(x, backend="reference"), *ops.topk_encode(x, W, be, bd, 5, backend="reference"),
            ops.attention_stats(q, k, rules=("prev",), backend="reference").lse,
            ops.persona_project(x.view(2, 1, 4, 16), W.t()[:3], backend="reference")]
    for a, b in zip(got, want):
        assert a.device == dev
        torch.testing.assert_close(a.cpu().double(), b.double(), atol=1e-4, rtol=1e-4)
