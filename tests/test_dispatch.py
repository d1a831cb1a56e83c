"""Backend registry and selection: set_backend, the context manager, the env variable, auto."""
import os
import subprocess
import sys

import pytest
import torch

import pyinterp
from pyinterp import _backend


def test_default_is_auto(monkeypatch):
    monkeypatch.delenv("PYINTERP_BACKEND", raising=False)
    assert pyinterp.get_backend() == "auto"


def test_set_backend_and_context_manager_priority(monkeypatch):
    monkeypatch.setenv("PYINTERP_BACKEND", "reference")
    assert pyinterp.get_backend() == "reference"
    pyinterp.set_backend("cpu")
    assert pyinterp.get_backend() == "cpu"
    with pyinterp.backend("triton"):
        assert pyinterp.get_backend() == "triton"
        with pyinterp.backend("reference"):
            assert pyinterp.get_backend() == "reference"
        assert pyinterp.get_backend() == "triton"
    assert pyinterp.get_backend() == "cpu"
    pyinterp.set_backend(None)
    assert pyinterp.get_backend() == "reference"


def test_unknown_backend_names_the_choices(monkeypatch):
    with pytest.raises(ValueError, match="backend must be one of"):
        pyinterp.set_backend("tpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        with pyinterp.backend("fast"):
            pass
    with pytest.raises(ValueError, match="backend"):
        pyinterp.ops.solu(torch.randn(2, 3), backend="nope")
    monkeypatch.setenv("PYINTERP_BACKEND", "nope")
    with pytest.raises(ValueError, match="PYINTERP_BACKEND"):
        pyinterp.get_backend()
    with pytest.raises(ValueError, match="PYINTERP_BACKEND"):
        pyinterp.ops.solu(torch.randn(2, 3))


def test_auto_picks_cpu_extension_for_cpu_tensors():
    x = torch.randn(2, 3)
    expected = "cpu" if _backend.availability("cpu")[0] else "reference"
    assert _backend.resolve("solu", pyinterp.BACKENDS, x) == expected


def test_auto_never_picks_triton_interpreter_on_cpu():
    x = torch.randn(2, 3)
    assert _backend.resolve("solu", ("reference", "triton"), x) == "reference"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_explicit_cuda_backend_on_cpu_tensor_raises():
    x = torch.randn(2, 3)
    with pytest.raises(pyinterp.BackendUnavailableError, match="cuda"):
        with pyinterp.backend("cuda"):
            pyinterp.ops.solu(x)


def test_explicit_backend_without_op_raises():
    with pytest.raises(pyinterp.BackendUnavailableError, match="does not implement"):
        _backend.resolve("someop", ("reference",), torch.randn(2), name="cpu")


def test_mixed_devices_rejected():
    with pytest.raises(ValueError, match="one device"):
        _backend.device_type_of(torch.randn(1), torch.empty(1, device="meta"))


def test_info_reports_every_backend_with_reason(capsys):
    data = pyinterp.info()
    out = capsys.readouterr().out
    for name in pyinterp.BACKENDS:
        assert name in data["backends"]
        assert isinstance(data["backends"][name]["detail"], str) and data["backends"][name]["detail"]
        assert name in out
    assert data["backends"]["reference"]["available"] is True


def test_cli_info_runs():
    out = subprocess.run([sys.executable, "-m", "pyinterp.cli", "info", "--json"],
                         capture_output=True, text=True, check=True).stdout
    assert '"backends"' in out


def test_import_without_extras_does_not_import_triton_or_cupy():
    code = ("import sys, pyinterp; import torch; pyinterp.ops.solu(torch.randn(2,3), backend='reference');"
            "print('triton' in sys.modules, 'cupy' in sys.modules)")
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.split() == ["False", "False"]
