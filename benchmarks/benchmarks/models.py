"""asv: training step and forward of the default small model, pyinterp's Transformer vs the
same model from plain torch modules, and one unhooked hook-point call; generated from
pyinterp/bench/cases_models.py (CPU, 2 threads)."""
from pyinterp.bench.suite import asv_classes

globals().update(asv_classes("models"))
