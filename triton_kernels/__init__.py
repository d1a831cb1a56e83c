"""Triton kernels of pyinterp, one module per op family (kernel, launcher, autograd Function).

Installed as ``pyinterp.triton_kernels``; use relative imports between these modules.
"""
