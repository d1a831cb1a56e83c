"""Side-by-side kernel benchmarks (``pyinterp bench`` / ``benchmarks/compare.py``).

Each op family adds a module ``pyinterp.bench.cases_<family>`` with ``cases(args) -> list[Case]``
and lists it in :data:`pyinterp.bench.compare.FAMILIES`. Every case times its baseline (torch
eager, a roofline copy, a peer library) in the same run, so ratios stay meaningful on a noisy
machine.
"""
