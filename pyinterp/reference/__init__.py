"""Pure-torch reference ops: the oracle every backend is tested against.

Low-precision inputs are computed in float32 and cast back, as the kernels do.
"""
