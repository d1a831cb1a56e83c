"""The sparse ops the dictionaries run on (one import point for the library).

They live in :mod:`pyinterp.ops.sae`, :mod:`pyinterp.ops.multi_decode` and
:mod:`pyinterp.ops.jumprelu`; pyinterp's dispatch picks the backend for the tensors' device
(``auto``), or the one a module was given (``module.backend``).
"""
from pyinterp.ops.jumprelu import jumprelu_gate, jumprelu_l0, jumprelu_select  # noqa: F401
from pyinterp.ops.multi_decode import multi_decode  # noqa: F401
from pyinterp.ops.sae import (  # noqa: F401
    activation_counts,
    batchtopk_encode,
    dense_from_sparse,
    sparse_decode,
    threshold_encode,
    topk_encode,
    update_activity,
)
