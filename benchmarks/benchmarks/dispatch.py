"""asv: per-call overhead of the op layers on tiny inputs, generated from
pyinterp/bench/cases_dispatch.py (CPU)."""
from pyinterp.bench.suite import asv_classes

globals().update(asv_classes("dispatch"))
