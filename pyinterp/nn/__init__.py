"""``torch.nn`` modules on pyinterp's kernels, for people building their own models.

    from pyinterp import nn as pnn
    mlp = torch.nn.Sequential(torch.nn.Linear(512, 2048), pnn.SoLULN(2048), torch.nn.Linear(2048, 512))
    bottleneck = pnn.SparseAutoencoder(512, 16384, k=32)   # y = layer(x); layer(x, return_code=True)

- :class:`SoLU`: x * softmax(x) (``pyinterp.ops.solu``).
- :class:`SoLULN`: LayerNorm(SoLU(x)) fused (``pyinterp.ops.solu_ln``), the SoLU paper's MLP
  activation, with ``nn.LayerNorm``'s parameters (``weight``/``bias``, ``elementwise_affine``).
- :class:`SparseAutoencoder`: a top-k (or ReLU/JumpReLU) sparse autoencoder layer whose code is
  ``(values, indices)`` and never a dense (N, d_sae) tensor (``pyinterp.ops.topk_encode`` /
  ``threshold_encode`` + ``sparse_decode``). For training dictionaries with a trainer,
  checkpoints and SAELens files use :mod:`pyinterp.sae`.

Every module takes ``backend=`` (None: pyinterp's automatic choice for the tensors' device).
"""
from pyinterp.nn.modules import SoLU, SoLULN, SparseAutoencoder

__all__ = ["SoLU", "SoLULN", "SparseAutoencoder"]
