"""JumpReLU band-selection launchers on the triton backend (the contract is in
:mod:`pyinterp.ops.jumprelu.function`): the torch-level threshold selection shared by the GPU
backends at threshold - bandwidth/2, and this backend's sparse encoder backward."""
from pyinterp.backends.sae_select import band  # noqa: F401  (launchers)
from pyinterp.backends.triton.sae import gather, scatter_rows  # noqa: F401
