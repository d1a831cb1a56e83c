"""Backend launchers: ``cpu`` (pyinterp._C), ``cuda`` (CuPy/NVRTC) and ``triton``.

Nothing here is imported by ``import pyinterp``; each backend loads on first use.
"""
