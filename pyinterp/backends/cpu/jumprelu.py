"""JumpReLU band-selection launchers on the CPU backend (the contract is in
:mod:`pyinterp.ops.jumprelu.function`): the C++ threshold selection of the sae family at
threshold - bandwidth/2, writing float32 (float64) pre-activations; the sparse encoder
backward is the sae family's."""
from __future__ import annotations

from pyinterp._common import acc_dtype
from pyinterp.backends.cpu.sae import gather, scatter_rows, threshold  # noqa: F401  (launchers)


def band(x, W_enc, b_enc, b_dec, thr, bandwidth, max_active):
    cd = acc_dtype(x.dtype)
    pre, idx, mask = threshold(x, W_enc, b_enc, b_dec, thr.to(cd) - bandwidth / 2, max_active,
                               out_dtype=cd)
    return pre.masked_fill(~mask, float("-inf")), idx, mask
