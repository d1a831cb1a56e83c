"""Models with TransformerLens hook points: pyinterp's small transformer, training, generation,
and adapters for Hugging Face and TransformerLens models.

    from pyinterp.models import Transformer, TransformerConfig
    model = Transformer(TransformerConfig(n_layers=2, d_model=256, n_heads=4, d_vocab=4096))
    logits, cache = model.run_with_cache(tokens, names_filter=["blocks.0.hook_resid_post"])
    with model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", steer)]):
        out = model.generate(tokens, max_new_tokens=20)
"""
from pyinterp.models.config import TransformerConfig
from pyinterp.models.generate import generate
from pyinterp.models.hooks import HookedModel, HookPoint
from pyinterp.models.io import load_model, save_model
from pyinterp.models.training import TrainConfig, TrainResult, train
from pyinterp.models.transformer import Transformer, lm_cross_entropy

__all__ = [
    "HookPoint",
    "HookedModel",
    "TrainConfig",
    "TrainResult",
    "Transformer",
    "TransformerConfig",
    "from_hf",
    "from_transformer_lens",
    "generate",
    "lm_cross_entropy",
    "load_model",
    "save_model",
    "train",
]


def __getattr__(name):
    # Lazy: the adapters need transformers / transformer_lens.
    if name == "from_hf":
        from pyinterp.models.hf import from_hf

        return from_hf
    if name == "from_transformer_lens":
        from pyinterp.models.tl import from_transformer_lens

        return from_transformer_lens
    raise AttributeError(f"module 'pyinterp.models' has no attribute {name!r}")
