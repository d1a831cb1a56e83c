"""asv: the sparse SAE ops, generated from pyinterp/bench/cases_sae.py (CPU, 2 threads)."""
from pyinterp.bench.suite import asv_classes

globals().update(asv_classes("sae"))
