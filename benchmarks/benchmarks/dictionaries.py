"""asv: the dictionary-zoo training steps, generated from pyinterp/bench/cases_dictionaries.py
(CPU, 2 threads; peak memory: ``pyinterp bench dictionaries``)."""
from pyinterp.bench.suite import asv_classes

globals().update(asv_classes("dictionaries"))
