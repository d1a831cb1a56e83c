"""JumpReLU band-selection launchers on the cuda backend (the contract is in
:mod:`pyinterp.ops.jumprelu.function`): the torch-level threshold selection shared by the GPU
backends at threshold - bandwidth/2, and this backend's sparse encoder backward."""
from pyinterp.backends.cuda.sae import gather, scatter_rows  # noqa: F401
from pyinterp.backends.sae_select import band  # noqa: F401  (launchers)
