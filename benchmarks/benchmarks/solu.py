"""asv: the SoLU family, generated from pyinterp/bench/cases_solu.py (CPU, 2 threads)."""
from pyinterp.bench.suite import asv_classes

globals().update(asv_classes("solu"))
