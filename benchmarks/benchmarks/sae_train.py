"""asv: one TopK SAE training step, generated from pyinterp/bench/cases_sae_train.py (CPU, 2
threads)."""
from pyinterp.bench.suite import asv_classes

globals().update(asv_classes("sae_train"))
