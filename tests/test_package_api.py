"""The package's import surface: subpackages load lazily on first attribute access after a bare
``import pyinterp``; ``pyinterp.sae.accelerate`` is the function, its module has its own name."""
import subprocess
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_lazy_subpackages_after_a_bare_import():
    code = ("import sys, pyinterp\n"
            "assert 'pyinterp.sae' not in sys.modules and 'pyinterp.models' not in sys.modules\n"
            "assert callable(pyinterp.sae.load) and callable(pyinterp.sae.from_pretrained)\n"
            "assert pyinterp.models.Transformer and pyinterp.attention.head_scores\n"
            "assert pyinterp.nn.SoLULN and pyinterp.integrations.sae_lens\n"
            "assert {'sae', 'models', 'nn', 'attention'} <= set(dir(pyinterp))\n"
            "try:\n    pyinterp.nope\nexcept AttributeError as e:\n    assert 'nope' in str(e)\n"
            "else:\n    raise SystemExit('no AttributeError')\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]


def test_accelerate_function_and_module_names():
    import pyinterp.sae.acceleration as acceleration
    from pyinterp import sae

    assert isinstance(acceleration, types.ModuleType)
    assert sae.accelerate is acceleration.accelerate and callable(sae.accelerate)
