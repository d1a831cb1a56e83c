"""pytest plugin used by tools/sanitize.sh: import pyinterp._C from the sanitizer build
(PYINTERP_C_PATH) instead of the in-tree extension, before any test imports it."""
import importlib.machinery
import importlib.util
import os
import sys

path = os.environ["PYINTERP_C_PATH"]
loader = importlib.machinery.ExtensionFileLoader("pyinterp._C", path)
spec = importlib.util.spec_from_file_location("pyinterp._C", path, loader=loader)
module = importlib.util.module_from_spec(spec)
sys.modules["pyinterp._C"] = module
spec.loader.exec_module(module)
import pyinterp  # noqa: E402

pyinterp._C = module
assert pyinterp._C.__file__ == path, (pyinterp._C.__file__, path)
