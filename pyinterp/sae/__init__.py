"""Dictionary learning (sparse autoencoders) on pyinterp's sparse SAE ops."""
from pyinterp.sae.config import SAEConfig
from pyinterp.sae.modules import (
    BatchTopKSAE,
    JumpReLUSAE,
    ReLUSAE,
    SAELoss,
    SparseAutoencoder,
    TopKSAE,
    build,
)

__all__ = ["BatchTopKSAE", "JumpReLUSAE", "ReLUSAE", "SAEConfig", "SAELoss",
           "SparseAutoencoder", "TopKSAE", "build"]
