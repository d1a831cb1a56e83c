"""asv: the attribution graph of one prompt, pyinterp.circuits.attribute against the dense
reference (circuit-tracer's method), generated from pyinterp/bench/cases_circuits.py (CPU,
2 threads)."""
from pyinterp.bench.suite import asv_classes

globals().update(asv_classes("circuits"))
