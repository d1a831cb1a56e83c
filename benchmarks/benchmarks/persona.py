"""asv: persona projections and the projection monitor, generated from
pyinterp/bench/cases_persona.py (CPU, 2 threads)."""
from pyinterp.bench.suite import asv_classes

globals().update(asv_classes("persona"))
