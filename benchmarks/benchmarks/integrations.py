"""asv: pyinterp as a drop-in backend of peer libraries (activation collection, TransformerLens
SoLU-LN models, SAELens training and inference SAEs), generated from
pyinterp/bench/cases_integrations.py (CPU, 2 threads)."""
from pyinterp.bench.suite import asv_classes

globals().update(asv_classes("integrations"))
