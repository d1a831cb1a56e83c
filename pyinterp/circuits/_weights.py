"""The linear pieces of a transformer that circuit tracing needs, read from any supported model.

With attention patterns and normalisation scales frozen, a block is linear in its residual
input through three maps only: the norms (centre, divide by the frozen scale, times the gain),
each head's OV circuit (W_V then W_O, mixed over positions by the frozen pattern), and the
unembedding. :func:`model_weights` reads them (as float copies) from pyinterp's
:class:`~pyinterp.models.Transformer`, the TransformerLens adapter and the Hugging Face adapter
(GPT-2 and the Llama family), so everything downstream is model-agnostic.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Norm:
    """A LayerNorm ("ln": centred), RMSNorm ("rms") or nothing ("none") with a frozen scale.

    forward(x, s) = centre(x) / s * w + b; ``s`` (T, 1) comes from :meth:`scale` on the
    original pass, after which the map is affine in x."""

    kind: str
    w: torch.Tensor | None
    b: torch.Tensor | None
    eps: float

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., T, d) -> (..., T, 1) the denominator the model divided by."""
        if self.kind == "none":
            return torch.ones_like(x[..., :1])
        if self.kind == "ln":
            x = x - x.mean(-1, keepdim=True)
        return (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        if self.kind == "none":
            return x
        if self.kind == "ln":
            x = x - x.mean(-1, keepdim=True)
        y = x / s
        if self.w is not None:
            y = y * self.w
        if self.b is not None:
            y = y + self.b
        return y

    def fold(self, W: torch.Tensor) -> torch.Tensor:
        """W (..., d, e) read by this norm's output -> the same map read from the input before
        the division by s: rows times the gain, centred over d for a LayerNorm."""
        if self.kind == "none":
            return W
        if self.w is not None:
            W = W * self.w[:, None]
        if self.kind == "ln":
            W = W - W.mean(-2, keepdim=True)
        return W

    def transpose(self, g: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """The adjoint of x -> forward(x, s) - forward(0, s): g (..., T, d) -> (..., T, d)."""
        if self.kind == "none":
            return g
        if self.w is not None:
            g = g * self.w
        g = g / s
        if self.kind == "ln":
            g = g - g.mean(-1, keepdim=True)
        return g


@dataclass
class Layer:
    ln1: Norm
    W_V: torch.Tensor            # (H, d_model, d_head), one per query head (GQA expanded)
    b_V: torch.Tensor | None  # (H, d_head)
    W_O: torch.Tensor            # (H, d_head, d_model)
    b_O: torch.Tensor | None  # (d_model,)
    ln2: Norm


@dataclass
class ModelWeights:
    layers: list[Layer]
    ln_final: Norm
    W_U: torch.Tensor            # (d_model, d_vocab)
    b_U: torch.Tensor | None  # (d_vocab,)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return self.W_U.shape[0]


def _f(t, dtype):
    return None if t is None else t.detach().to(dtype).clone()


def _expand_heads(t: torch.Tensor | None, n_heads: int) -> torch.Tensor | None:
    """(H_kv, ...) -> (H, ...) by repeating each key/value head for its query group."""
    if t is None or t.shape[0] == n_heads:
        return t
    if n_heads % t.shape[0]:
        raise ValueError(f"{n_heads} query heads are not a multiple of {t.shape[0]} key/value heads")
    return t.repeat_interleave(n_heads // t.shape[0], dim=0)


def _pyinterp_norm(mod, dtype) -> Norm:
    if not hasattr(mod, "w"):
        return Norm("none", None, None, 0.0)
    return Norm("ln", _f(mod.w, dtype), _f(mod.b, dtype), float(mod.eps))


def _from_pyinterp(model, dtype) -> ModelWeights:
    if model.cfg.attn_only:
        raise ValueError("circuit tracing replaces MLPs by dictionaries: the model is attention-only "
                         "(act_fn=None), it has no MLP to replace")
    layers = []
    for b in model.blocks:
        a = b.attn
        layers.append(Layer(_pyinterp_norm(b.ln1, dtype), _f(a.W_V, dtype), _f(a.b_V, dtype),
                            _f(a.W_O, dtype), _f(a.b_O, dtype), _pyinterp_norm(b.ln2, dtype)))
    return ModelWeights(layers, _pyinterp_norm(model.ln_final, dtype), _f(model.W_U, dtype),
                        _f(model.unembed.b_U, dtype))


def _tl_norm(mod, eps, dtype) -> Norm:
    name = type(mod).__name__
    kind = {"LayerNorm": "ln", "LayerNormPre": "ln", "RMSNorm": "rms", "RMSNormPre": "rms"}.get(name)
    if kind is None:
        if isinstance(mod, torch.nn.Identity):
            return Norm("none", None, None, 0.0)
        raise ValueError(f"unsupported TransformerLens normalisation {name}")
    return Norm(kind, _f(getattr(mod, "w", None), dtype), _f(getattr(mod, "b", None), dtype),
                float(getattr(mod, "eps", eps)))


def _from_tl(adapter, dtype) -> ModelWeights:
    tl = adapter.model
    c = tl.cfg
    if getattr(c, "parallel_attn_mlp", False):
        raise ValueError("circuit tracing needs sequential attention then MLP blocks; this "
                         "TransformerLens model runs them in parallel")
    layers = []
    for b in tl.blocks:
        if hasattr(b, "ln1_post") or hasattr(b, "ln2_post"):
            raise ValueError("TransformerLens blocks with post-sublayer norms (ln1_post/ln2_post) "
                             "are not supported by pyinterp.circuits")
        a = b.attn
        H = c.n_heads
        layers.append(Layer(_tl_norm(b.ln1, c.eps, dtype), _expand_heads(_f(a.W_V, dtype), H),
                            _expand_heads(_f(a.b_V, dtype), H), _f(a.W_O, dtype), _f(a.b_O, dtype),
                            _tl_norm(b.ln2, c.eps, dtype)))
    return ModelWeights(layers, _tl_norm(tl.ln_final, c.eps, dtype), _f(tl.W_U, dtype),
                        _f(tl.b_U, dtype))


def _hf_norm(mod, dtype) -> Norm:
    if hasattr(mod, "variance_epsilon"):  # Llama-family RMSNorm
        return Norm("rms", _f(mod.weight, dtype), None, float(mod.variance_epsilon))
    if isinstance(mod, torch.nn.LayerNorm):
        return Norm("ln", _f(mod.weight, dtype), _f(mod.bias, dtype), float(mod.eps))
    raise ValueError(f"unsupported Hugging Face normalisation {type(mod).__name__}")


def _from_hf(adapter, dtype) -> ModelWeights:
    c = adapter.cfg
    gpt2 = adapter.family == "gpt2"
    H, Hkv, dh = c.n_heads, c.n_key_value_heads, c.d_head
    layers = []
    for layer, hb in zip(adapter._layers, adapter.blocks):
        attn = layer.attn if gpt2 else layer.self_attn
        if gpt2:
            b_V = attn.c_attn.bias[2 * H * dh:].reshape(H, dh)
            b_O = attn.c_proj.bias
            ln1, ln2 = layer.ln_1, layer.ln_2
        else:
            vb = attn.v_proj.bias
            b_V = None if vb is None else vb.reshape(Hkv, dh)
            b_O = attn.o_proj.bias
            ln1, ln2 = layer.input_layernorm, layer.post_attention_layernorm
        layers.append(Layer(_hf_norm(ln1, dtype), _expand_heads(_f(hb.attn.W_V, dtype), H),
                            _expand_heads(_f(b_V, dtype), H), _f(hb.attn.W_O, dtype), _f(b_O, dtype),
                            _hf_norm(ln2, dtype)))
    head = adapter.model.get_output_embeddings()
    return ModelWeights(layers, _hf_norm(adapter._norm, dtype), _f(head.weight.T, dtype),
                        _f(getattr(head, "bias", None), dtype))


def model_weights(model, dtype: torch.dtype = torch.float32) -> ModelWeights:
    """The norms, OV circuits and unembedding of ``model`` as ``dtype`` copies.

    model: pyinterp's Transformer, ``pyinterp.models.from_transformer_lens(...)`` or
    ``pyinterp.models.from_hf(...)``."""
    from pyinterp.models.transformer import Transformer

    if isinstance(model, Transformer):
        return _from_pyinterp(model, dtype)
    kind = type(model).__name__
    if kind == "HookedTL":
        return _from_tl(model, dtype)
    if kind == "HookedHF":
        return _from_hf(model, dtype)
    raise TypeError("circuit tracing takes a pyinterp Transformer or a model wrapped by "
                    "pyinterp.models.from_hf / from_transformer_lens, got " + kind)
