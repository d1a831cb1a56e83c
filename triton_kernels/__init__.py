"""Triton kernels of pyinterp, one module per op family: @triton.jit functions only.

Installed as ``pyinterp.triton_kernels``. Nothing here imports pyinterp: the launchers that
choose grids and call these kernels live in ``pyinterp/backends/triton/<family>.py``.
"""
