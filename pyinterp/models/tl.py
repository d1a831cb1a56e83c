"""Adapter: pyinterp's hook API on a TransformerLens ``HookedTransformer``.

TransformerLens already names its hook points as pyinterp does; the adapter gives the model
pyinterp's call conventions (``run_with_cache`` returning a plain dict, ``hooks``,
``generate`` with left padding, ``loss`` per token, ``stop_at_layer``) and one difference in
meaning: pyinterp's ``attn.hook_q`` / ``attn.hook_k`` are q and k *after* rotary embeddings,
which TransformerLens calls ``hook_rot_q`` / ``hook_rot_k`` (for models without rotary they are
the same tensors). Hook functions are attached to the TransformerLens hook points only while
registered here.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from pyinterp.models.hf import AdapterConfig
from pyinterp.models.hooks import HookedModel, HookPoint
from pyinterp.models.transformer import check_return_type, forward_output


def _require_tl():
    try:
        import transformer_lens  # noqa: F401
    except ImportError as e:
        raise ImportError("pyinterp.models.from_transformer_lens needs transformer-lens: "
                          "pip install 'pyinterp[peers]'") from e
    return transformer_lens


class HookedTL(HookedModel, nn.Module):
    """A TransformerLens ``HookedTransformer`` (``.model``) with pyinterp's hook API."""

    def __init__(self, tl_model: nn.Module):
        super().__init__()
        self.model = tl_model
        c = tl_model.cfg
        self.tl_cfg = c
        rotary = getattr(c, "positional_embedding_type", "standard") == "rotary"
        self.cfg = AdapterConfig(
            family="transformer_lens", n_layers=c.n_layers, d_model=c.d_model, n_heads=c.n_heads,
            d_head=c.d_head, d_mlp=getattr(c, "d_mlp", None), d_vocab=c.d_vocab, n_ctx=c.n_ctx,
            n_key_value_heads=getattr(c, "n_key_value_heads", None) or c.n_heads,
            act_fn=None if getattr(c, "attn_only", False) else c.act_fn,
            positional="rotary" if rotary else "learned",
            normalization=str(getattr(c, "normalization_type", None)),
            tied_embeddings=False)
        self.tokenizer = getattr(tl_model, "tokenizer", None)
        self._tl_name: Dict[str, str] = {}
        self._hook_dict = {}
        for name in tl_model.hook_dict:
            if rotary and name.endswith(("attn.hook_q", "attn.hook_k")):
                continue  # pyinterp's hook_q/hook_k are TransformerLens's hook_rot_q/hook_rot_k
            ours = name
            if rotary and name.endswith(("attn.hook_rot_q", "attn.hook_rot_k")):
                ours = name.replace("hook_rot_", "hook_")
            hp = HookPoint()
            hp.name = ours
            hp._on_change = self._binder(hp, tl_model.hook_dict[name])
            self._tl_name[ours] = name
            self._hook_dict[ours] = hp
        self.train(tl_model.training)

    @staticmethod
    def _binder(point: HookPoint, tl_point: nn.Module):
        state = {"handle": None}

        def fn(module, inputs, output):
            y = point(output)
            return None if y is output else y

        def on_change(active: bool):
            if active and state["handle"] is None:
                state["handle"] = tl_point.register_forward_hook(fn)
            elif not active and state["handle"] is not None:
                state["handle"].remove()
                state["handle"] = None
        return on_change

    @property
    def config(self) -> AdapterConfig:
        return self.cfg

    @property
    def max_context(self) -> Optional[int]:
        return self.cfg.n_ctx if self.cfg.positional == "learned" else None

    @property
    def pad_token_id(self) -> Optional[int]:
        tok = self.tokenizer
        v = getattr(tok, "pad_token_id", None)
        return v if isinstance(v, int) else 0

    @property
    def W_E(self) -> torch.Tensor:
        return self.model.W_E

    @property
    def W_U(self) -> torch.Tensor:
        return self.model.W_U

    def forward(self, tokens: torch.Tensor, return_type: Optional[str] = "logits",
                attention_mask: Optional[torch.Tensor] = None, stop_at_layer: Optional[int] = None,
                loss_per_token: bool = False):
        """tokens: (B, T) -> logits | loss | (logits, loss) | None, as for pyinterp's Transformer."""
        check_return_type(return_type)
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"tokens must be a torch.Tensor of token ids, got {type(tokens).__name__}")
        tokens = tokens if tokens.ndim == 2 else tokens[None]
        if self.max_context is not None and tokens.shape[1] > self.max_context:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds the model's context "
                             f"n_ctx={self.max_context}")
        kw = {}
        if attention_mask is not None:
            kw = dict(attention_mask=attention_mask, padding_side="left")
        if stop_at_layer is not None:
            return self.model(tokens, stop_at_layer=stop_at_layer, **kw)
        logits = self.model(tokens, return_type="logits", **kw)
        return forward_output(logits, tokens, attention_mask, return_type, loss_per_token)

    def loss(self, tokens, per_token: bool = False, attention_mask=None):
        return self(tokens, return_type="loss", attention_mask=attention_mask, loss_per_token=per_token)

    def _decode_step(self, tokens, attention_mask, cache):
        # The "cache" is the token history: each step re-runs the whole sequence (TransformerLens's
        # own KV cache does not take a per-step padding mask). Hooks see full sequences.
        full = tokens if cache is None else torch.cat([cache, tokens], 1)
        logits = self(full, attention_mask=attention_mask)
        return logits[:, -tokens.shape[1]:], full

    def generate(self, inputs, max_new_tokens: int = 20, **kwargs):
        from pyinterp.models.generate import generate

        return generate(self, inputs, max_new_tokens=max_new_tokens, **kwargs)


def from_transformer_lens(model: nn.Module) -> HookedTL:
    """Wrap a TransformerLens ``HookedTransformer`` with pyinterp's hook API."""
    tl = _require_tl()
    if not isinstance(model, tl.HookedTransformer):
        raise TypeError("from_transformer_lens takes a transformer_lens.HookedTransformer, got "
                        f"{type(model).__name__}")
    return HookedTL(model)
