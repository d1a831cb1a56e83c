"""asv: attention statistics and head scores, generated from pyinterp/bench/cases_attention.py
(CPU, 2 threads)."""
from pyinterp.bench.suite import asv_classes

globals().update(asv_classes("attention"))
