"""Adapter: TransformerLens hook points on Hugging Face ``transformers`` causal LMs.

    model = pyinterp.models.from_hf("path/to/local/model")   # or an already built model
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: "resid_post" in n)

Supported families: GPT-2 (``gpt2``) and the Llama layout (``llama``, ``mistral``, ``qwen2``,
``qwen3``). Hook points and shapes are those of :class:`pyinterp.models.Transformer`;
``blocks.{i}.hook_resid_post`` is exactly the model's own hidden state after block i.

How: module-boundary activations (embeddings, residual stream, attention and MLP outputs,
MLP neurons) use PyTorch forward hooks that are attached only while a pyinterp hook is
registered on them. q/k/v after rotary embeddings, the pattern and z live inside the attention
function, so while any attention hook point of an adapted model has a hook function, the
adapter wraps ``transformers``' attention functions (``sdpa``, ``eager``) in the library's
``AttentionInterface``; when the last such hook is removed the registry is restored exactly as
it was (no lasting global change). The wrapper calls the original function unchanged for
modules of models that are not adapted or have no attention hook, so SDPA stays SDPA. A forward
pass in which an active attention hook point did not fire (an attention implementation pyinterp
does not wrap, such as flash attention) raises instead of returning a silently unhooked result.
With grouped-query attention hook_k/hook_v have ``n_key_value_heads`` heads (as in
TransformerLens).

Wrapping is idempotent: ``from_hf(hf_model)`` on a model that already has a live wrapper
returns that wrapper (two wrappers would fight over the attention modules).
"""
from __future__ import annotations

import contextlib
import os
import sys
import weakref
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import torch
from torch import nn

from pyinterp.models.hooks import AttentionHookPoints, HookedModel, HookPoint
from pyinterp.models.transformer import check_return_type, forward_output

GPT2_FAMILIES = ("gpt2",)
LLAMA_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_FAMILIES = GPT2_FAMILIES + LLAMA_FAMILIES
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# Attribute (in the HF model's __dict__, so not a submodule) holding a weak reference to the
# model's live HookedHF wrapper.
_WRAPPER_ATTR = "_pyinterp_hooked_hf"


def _require_transformers():
    try:
        import transformers  # noqa: F401
    except ImportError as e:
        raise ImportError("pyinterp.models.from_hf needs Hugging Face transformers: "
                          "pip install 'pyinterp[hf]'") from e
    return transformers


@dataclass
class AdapterConfig:
    """What pyinterp needs to know about a wrapped model (TransformerLens field names)."""

    family: str
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: Optional[int]
    d_vocab: int
    n_ctx: int
    n_key_value_heads: int
    act_fn: Optional[str]
    positional: str
    normalization: str
    tied_embeddings: bool

    @property
    def attn_only(self) -> bool:
        return False

    def to_dict(self) -> dict:
        return asdict(self)


# -- hook-point containers (their module paths give the TransformerLens names) ------------------
class _LNHooks(nn.Module):
    def __init__(self):
        super().__init__()
        self.hook_normalized = HookPoint()


class _AttnHooks(AttentionHookPoints):
    def __init__(self):
        super().__init__()
        self.calls = 0  # hooked attention calls since HookedHF last reset it (fire check)

    @property
    def active(self) -> bool:
        return any(p.active for p in self.points())

    # The HF attention module and its head layout, set by HookedHF._bind_sites as plain attributes
    # (not submodules: the wrapper's module tree must not hold the HF weights twice).
    def _bind_weights(self, hf_attn: nn.Module, gpt2: bool, n_heads: int, n_kv_heads: int, d_head: int):
        self.__dict__["_hf_weights"] = (hf_attn, gpt2, n_heads, n_kv_heads, d_head)

    @property
    def W_V(self) -> torch.Tensor:
        """(n_kv_heads, d_model, d_head) views of the value projection (v = x @ W_V[h], bias aside)."""
        attn, gpt2, H, Hkv, dh = self.__dict__["_hf_weights"]
        if gpt2:  # Conv1D c_attn: x @ weight, weight (d_model, 3 d_model) = [q | k | v]
            w = attn.c_attn.weight[:, 2 * H * dh:]
        else:  # Linear v_proj: x @ weight.T, weight (Hkv dh, d_model)
            w = attn.v_proj.weight.T
        return w.reshape(w.shape[0], Hkv, dh).permute(1, 0, 2)

    @property
    def W_O(self) -> torch.Tensor:
        """(n_heads, d_head, d_model): attn_out = sum_h z[..., h, :] @ W_O[h] (+ bias)."""
        attn, gpt2, H, _, dh = self.__dict__["_hf_weights"]
        w = attn.c_proj.weight if gpt2 else attn.o_proj.weight.T  # (H dh, d_model)
        return w.reshape(H, dh, w.shape[1])


class _MLPHooks(nn.Module):
    def __init__(self, gated: bool):
        super().__init__()
        self.hook_pre = HookPoint()
        if gated:
            self.hook_pre_linear = HookPoint()
        self.hook_post = HookPoint()


class _BlockHooks(nn.Module):
    def __init__(self, gated: bool):
        super().__init__()
        self.hook_resid_pre = HookPoint()
        self.ln1 = _LNHooks()
        self.attn = _AttnHooks()
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        self.ln2 = _LNHooks()
        self.mlp = _MLPHooks(gated)
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()


# -- lazily attached torch hooks ------------------------------------------------------------------
class _Site:
    """One PyTorch hook on one module, attached while any of its hook points is active."""

    def __init__(self, module: nn.Module, kind: str, fn: Callable):
        self.module, self.kind, self.fn = module, kind, fn
        self.users = 0
        self.handle = None

    def acquire(self):
        self.users += 1
        if self.handle is None:
            if self.kind == "pre":
                self.handle = self.module.register_forward_pre_hook(self.fn, with_kwargs=True)
            else:
                self.handle = self.module.register_forward_hook(self.fn)

    def release(self):
        self.users = max(0, self.users - 1)
        if self.users == 0 and self.handle is not None:
            self.handle.remove()
            self.handle = None


def _bind(point: HookPoint, sites: List[_Site]) -> None:
    def on_change(active: bool):
        for s in sites:
            s.acquire() if active else s.release()
    point._on_change = on_change


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output, new):
    if isinstance(output, tuple):
        return (new,) + tuple(output[1:])
    return new


def _output_hook(point: HookPoint):
    def fn(module, args, output):
        if not point.active:
            return None
        x = _first(output)
        y = point(x)
        return None if y is x else _replace_first(output, y)
    return fn


def _input_hook(point: HookPoint):
    """Pre-hook replacing the module's first input (positional or ``hidden_states=``)."""
    def fn(module, args, kwargs):
        if not point.active:
            return None
        if args:
            x = args[0]
            y = point(x)
            return None if y is x else ((y,) + tuple(args[1:]), kwargs)
        x = kwargs["hidden_states"]
        y = point(x)
        if y is x:
            return None
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = y
        return args, kwargs
    return fn


class _StopForward(Exception):
    def __init__(self, value):
        self.value = value


# -- attention-function wrapper --------------------------------------------------------------------
def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, H_kv, S, d) -> (B, H_kv * n_rep, S, d)."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def _wrap_attention(orig: Optional[Callable], name: str) -> Callable:
    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        fn = orig
        if fn is None:  # eager: each model file defines its own eager_attention_forward
            fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward")
        hooks: Optional[_AttnHooks] = getattr(module, "_pyinterp_attn_hooks", None)
        if hooks is None or not hooks.active:
            return fn(module, query, key, value, attention_mask, *args, **kwargs)
        return _hooked_attention(hooks, fn, module, query, key, value, attention_mask, *args, **kwargs)
    attention._pyinterp_orig = orig
    attention.__name__ = f"pyinterp_hooked_{name}"
    return attention


def _hook_new(point: HookPoint, x: torch.Tensor, T: int) -> torch.Tensor:
    """Run ``point`` on the last T positions of x: (B, H, S, d); hook sees (B, T, H, d)."""
    if not point.active:
        return x
    new = x[:, :, -T:]
    y = point(new.transpose(1, 2))
    y = y.transpose(1, 2)
    if x.shape[2] == T:
        return y
    return torch.cat([x[:, :, :-T], y.to(x.dtype)], 2)


def _hooked_attention(hooks: _AttnHooks, fn, module, query, key, value, attention_mask,
                      *args, **kwargs):
    # query: (B, H, T, d) after rotary; key/value: (B, H_kv, S, d), past + new (after rotary).
    hooks.calls += 1
    T = query.shape[2]
    if hooks.hook_q.active:
        query = hooks.hook_q(query.transpose(1, 2)).transpose(1, 2)
    key = _hook_new(hooks.hook_k, key, T)
    value = _hook_new(hooks.hook_v, value, T)
    if hooks.hook_attn_scores.active or hooks.hook_pattern.active:
        n_rep = query.shape[1] // key.shape[1]
        k, v = _repeat_kv(key, n_rep), _repeat_kv(value, n_rep)
        scaling = kwargs.get("scaling")
        if scaling is None:
            scaling = getattr(module, "scaling", query.shape[-1] ** -0.5)
        scores = torch.matmul(query, k.transpose(2, 3)) * scaling  # (B, H, T, S)
        S = k.shape[2]
        if attention_mask is None:
            causal = torch.ones(T, S, dtype=torch.bool, device=query.device).tril(S - T)
            scores = scores.masked_fill(~causal, float("-inf"))
        elif attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask[..., :S], float("-inf"))
        else:
            scores = scores + attention_mask[..., :S]
        scores = hooks.hook_attn_scores(scores)
        pattern = torch.softmax(scores.float(), dim=-1).to(v.dtype)
        pattern = hooks.hook_pattern(pattern)
        z = torch.matmul(pattern, v).transpose(1, 2)  # (B, T, H, d)
        weights = pattern
    else:
        z, weights = fn(module, query, key, value, attention_mask, *args, **kwargs)
    z = hooks.hook_z(z)
    return z, weights


_MISSING = object()


class _AttentionFunctions:
    """transformers' global ``sdpa``/``eager`` attention functions, wrapped only while at least
    one attention hook point of an adapted model is active (reference-counted like a
    :class:`_Site`), then put back exactly as they were."""

    NAMES = ("sdpa", "eager")

    def __init__(self):
        self.users = 0
        self.saved: dict = {}

    def acquire(self):
        self.users += 1
        if self.users == 1:
            from transformers.modeling_utils import AttentionInterface

            mapping = AttentionInterface._global_mapping
            for name in self.NAMES:
                cur = mapping.get(name, _MISSING)
                self.saved[name] = cur
                AttentionInterface.register(name, _wrap_attention(None if cur is _MISSING else cur, name))

    def release(self):
        self.users = max(0, self.users - 1)
        if self.users == 0 and self.saved:
            from transformers.modeling_utils import AttentionInterface

            mapping = AttentionInterface._global_mapping
            for name, orig in self.saved.items():
                if not getattr(mapping.get(name), "__name__", "").startswith("pyinterp_hooked_"):
                    continue  # someone registered their own function since: keep theirs
                if orig is _MISSING:
                    del mapping[name]
                else:
                    mapping[name] = orig
            self.saved = {}


_ATTENTION_FUNCTIONS = _AttentionFunctions()


# -- the adapter ----------------------------------------------------------------------------------
class HookedHF(HookedModel, nn.Module):
    """A Hugging Face causal LM with pyinterp's hook points (see the module docstring).

    ``model(tokens, return_type=...)``, ``loss``, ``run_with_cache``, ``run_with_hooks``,
    ``hooks``, ``generate`` behave as on :class:`pyinterp.models.Transformer`. The wrapped
    model is ``.model``; ``.tokenizer`` is set when one was found or given.
    """

    def __init__(self, hf_model: nn.Module, tokenizer=None):
        super().__init__()
        family = _family(hf_model)
        if _live_wrapper(hf_model) is not None:
            raise ValueError(f"this {type(hf_model).__name__} already has a pyinterp wrapper; use "
                             "pyinterp.models.from_hf(model), which returns it (two wrappers of "
                             "one model would take each other's attention hooks)")
        self.model = hf_model
        self.family = family
        self.tokenizer = tokenizer
        c = hf_model.config
        gpt2 = family in GPT2_FAMILIES
        n_heads = c.num_attention_heads if not gpt2 else c.n_head
        d_model = c.hidden_size if not gpt2 else c.n_embd
        self.cfg = AdapterConfig(
            family=family,
            n_layers=c.num_hidden_layers if not gpt2 else c.n_layer,
            d_model=d_model,
            n_heads=n_heads,
            d_head=getattr(c, "head_dim", None) or d_model // n_heads,
            d_mlp=(c.intermediate_size if not gpt2 else (c.n_inner or 4 * d_model)),
            d_vocab=c.vocab_size,
            n_ctx=(c.n_positions if gpt2 else c.max_position_embeddings),
            n_key_value_heads=(getattr(c, "num_key_value_heads", None) or n_heads) if not gpt2 else n_heads,
            act_fn=(c.activation_function if gpt2 else c.hidden_act),
            positional="learned" if gpt2 else "rotary",
            normalization="ln" if gpt2 else "rms",
            tied_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
        )
        if gpt2:
            base = hf_model.transformer
            self._embed, self._pos, self._layers, self._norm = base.wte, base.wpe, base.h, base.ln_f
        else:
            base = hf_model.model
            self._embed, self._pos, self._layers, self._norm = base.embed_tokens, None, base.layers, base.norm
        self.hook_embed = HookPoint()
        if gpt2:
            self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList(_BlockHooks(gated=not gpt2) for _ in range(self.cfg.n_layers))
        self.ln_final = _LNHooks()
        self._resid_pre: dict = {}
        self._bind_sites(gpt2)
        self.setup_hooks()
        self.train(hf_model.training)  # the wrapper's mode is the wrapped model's
        hf_model.__dict__[_WRAPPER_ATTR] = weakref.ref(self)

    def __deepcopy__(self, memo):
        """A new wrapper around a deep copy of the wrapped model, with its own hook sites.

        nn.Module's default deepcopy would copy the hook points but not the closures that attach
        them (functions are shared by deepcopy), so hooks added to the copy would land on the
        original model. The copy starts with no hooks; the tokenizer is shared.
        """
        import copy

        hf_copy = copy.deepcopy(self.model, memo)
        for mod in hf_copy.modules():
            # drop this module's PyTorch hooks that belong to the original wrapper's hook points
            for hooks in (mod._forward_hooks, mod._forward_pre_hooks):
                for key in [k for k, fn in hooks.items() if getattr(fn, "__module__", None) == __name__]:
                    del hooks[key]
                    mod._forward_hooks_with_kwargs.pop(key, None)
                    mod._forward_pre_hooks_with_kwargs.pop(key, None)
            mod.__dict__.pop("_pyinterp_attn_hooks", None)
        hf_copy.__dict__.pop(_WRAPPER_ATTR, None)
        return HookedHF(hf_copy, tokenizer=self.tokenizer)

    @property
    def config(self) -> AdapterConfig:
        return self.cfg

    @property
    def pad_token_id(self) -> Optional[int]:
        tok = self.tokenizer
        for v in (getattr(tok, "pad_token_id", None), getattr(tok, "eos_token_id", None),
                  getattr(self.model.config, "pad_token_id", None),
                  getattr(self.model.config, "eos_token_id", None)):
            if isinstance(v, int) and 0 <= v < self.cfg.d_vocab:
                return v
        return 0

    @property
    def max_context(self) -> Optional[int]:
        return self.cfg.n_ctx if self.cfg.positional == "learned" else None

    @property
    def W_E(self) -> torch.Tensor:
        return self._embed.weight

    @property
    def W_U(self) -> torch.Tensor:
        """(d_model, d_vocab)."""
        return self.model.get_output_embeddings().weight.T

    def _bind_sites(self, gpt2: bool) -> None:
        _bind(self.hook_embed, [_Site(self._embed, "fwd", _output_hook(self.hook_embed))])
        if gpt2:
            _bind(self.hook_pos_embed, [_Site(self._pos, "fwd", _output_hook(self.hook_pos_embed))])
        _bind(self.ln_final.hook_normalized,
              [_Site(self._norm, "fwd", _output_hook(self.ln_final.hook_normalized))])
        for i, (layer, hb) in enumerate(zip(self._layers, self.blocks)):
            attn = layer.attn if gpt2 else layer.self_attn
            mlp = layer.mlp
            ln1 = layer.ln_1 if gpt2 else layer.input_layernorm
            ln2 = layer.ln_2 if gpt2 else layer.post_attention_layernorm
            # Plain attribute (not a registered submodule): the HF module tree stays unchanged.
            attn.__dict__["_pyinterp_attn_hooks"] = hb.attn
            hb.attn._bind_weights(attn, gpt2, self.cfg.n_heads, self.cfg.n_key_value_heads, self.cfg.d_head)
            for point in hb.attn.points():
                _bind(point, [_ATTENTION_FUNCTIONS])
            pre_site = _Site(layer, "pre", self._resid_pre_hook(i, hb))
            attn_site = _Site(attn, "fwd", self._attn_out_hook(i, hb))
            _bind(hb.hook_resid_pre, [pre_site])
            _bind(hb.hook_attn_out, [attn_site])
            _bind(hb.hook_resid_mid, [pre_site, attn_site])
            _bind(hb.ln1.hook_normalized, [_Site(ln1, "fwd", _output_hook(hb.ln1.hook_normalized))])
            _bind(hb.ln2.hook_normalized, [_Site(ln2, "fwd", _output_hook(hb.ln2.hook_normalized))])
            _bind(hb.hook_mlp_out, [_Site(mlp, "fwd", _output_hook(hb.hook_mlp_out))])
            _bind(hb.hook_resid_post, [_Site(layer, "fwd", _output_hook(hb.hook_resid_post))])
            if gpt2:
                _bind(hb.mlp.hook_pre, [_Site(mlp.c_fc, "fwd", _output_hook(hb.mlp.hook_pre))])
                _bind(hb.mlp.hook_post, [_Site(mlp.c_proj, "pre", _input_hook(hb.mlp.hook_post))])
            else:
                _bind(hb.mlp.hook_pre, [_Site(mlp.gate_proj, "fwd", _output_hook(hb.mlp.hook_pre))])
                _bind(hb.mlp.hook_pre_linear,
                      [_Site(mlp.up_proj, "fwd", _output_hook(hb.mlp.hook_pre_linear))])
                _bind(hb.mlp.hook_post, [_Site(mlp.down_proj, "pre", _input_hook(hb.mlp.hook_post))])

    def _resid_pre_hook(self, i: int, hb: _BlockHooks):
        inner = _input_hook(hb.hook_resid_pre)

        def fn(module, args, kwargs):
            res = inner(module, args, kwargs)
            if hb.hook_resid_mid.active:  # the attention hook needs it to form resid_mid
                a, kw = res if res is not None else (args, kwargs)
                self._resid_pre[i] = a[0] if a else kw["hidden_states"]
            return res
        return fn

    def _attn_out_hook(self, i: int, hb: _BlockHooks):
        def fn(module, args, output):
            a = _first(output)
            new = hb.hook_attn_out(a)
            if hb.hook_resid_mid.active:
                pre = self._resid_pre.pop(i)
                mid = pre + new  # the same sum the block computes next
                mid2 = hb.hook_resid_mid(mid)
                if mid2 is not mid:
                    new = mid2 - pre
            return None if new is a else _replace_first(output, new)
        return fn

    # -- forward ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _attention_fires(self, layers: Optional[int] = None):
        """Raise after the block if an active attention hook point of the first ``layers``
        blocks (all by default) did not fire: its values would otherwise be silently missing."""
        n = self.cfg.n_layers if layers is None else layers
        active = [(i, hb.attn) for i, hb in enumerate(self.blocks[:n]) if hb.attn.active]
        for _, a in active:
            a.calls = 0
        yield
        silent = [i for i, a in active if a.calls == 0]
        if silent:
            names = [p.name for i in silent for p in self.blocks[i].attn.points() if p.active]
            impl = getattr(self.model.config, "_attn_implementation", None)
            if impl not in _AttentionFunctions.NAMES:
                why = (f"the model runs attn_implementation={impl!r}, which pyinterp does not hook; "
                       "load it with attn_implementation='sdpa' or 'eager'")
            else:
                why = ("its attention bypassed transformers' AttentionInterface (e.g. GPT-2 with "
                       "reorder_and_upcast_attn) or another wrapper took over its attention modules")
            raise RuntimeError(f"attention hook points {names} did not fire during the forward "
                               f"pass: {why}")

    def _position_ids(self, attention_mask, past_len: int, T: int):
        if attention_mask is None:
            return None
        pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        return pos[:, past_len:past_len + T]

    def _check_tokens(self, tokens):
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"tokens must be a torch.Tensor of token ids, got {type(tokens).__name__}")
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape (batch, seq), got {tuple(tokens.shape)}")
        if self.max_context is not None and tokens.shape[1] > self.max_context:
            raise ValueError(f"sequence length {tokens.shape[1]} exceeds the model's context "
                             f"n_ctx={self.max_context}")
        return tokens.long()

    def forward(self, tokens: torch.Tensor, return_type: Optional[str] = "logits",
                attention_mask: Optional[torch.Tensor] = None, stop_at_layer: Optional[int] = None,
                loss_per_token: bool = False):
        """tokens: (B, T) -> logits (B, T, d_vocab) | loss | (logits, loss) | None;
        ``stop_at_layer=i`` returns the residual stream entering block i."""
        check_return_type(return_type)
        tokens = self._check_tokens(tokens)
        kw = dict(input_ids=tokens, attention_mask=attention_mask, use_cache=False,
                  position_ids=self._position_ids(attention_mask, 0, tokens.shape[1]))
        if stop_at_layer is not None:
            return self._run_until(stop_at_layer, kw)
        with self._attention_fires():
            logits = self.model(**kw).logits
        return forward_output(logits, tokens, attention_mask, return_type, loss_per_token)

    def _run_until(self, layer: int, kw):
        if not 0 <= layer <= self.cfg.n_layers:
            raise ValueError(f"stop_at_layer must be in [0, {self.cfg.n_layers}], got {layer}")
        if layer == self.cfg.n_layers:
            def grab(module, args, kwargs):
                raise _StopForward(args[0] if args else kwargs["hidden_states"])
            h = self._norm.register_forward_pre_hook(grab, with_kwargs=True)
        else:
            def grab(module, args, kwargs):
                raise _StopForward(args[0] if args else kwargs["hidden_states"])
            h = self._layers[layer].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            # Registered after the user's pre-hooks, so it sees hook_resid_pre's replacement.
            with self._attention_fires(layer):
                try:
                    self.model(**kw)
                except _StopForward as stop:
                    value = stop.value
                else:
                    raise RuntimeError("stop_at_layer: the forward pass ended before the requested layer")
        finally:
            h.remove()
        return value

    def loss(self, tokens, per_token: bool = False, attention_mask=None):
        """Next-token cross entropy: scalar mean, or (B, T-1) with ``per_token=True``."""
        return self(tokens, return_type="loss", attention_mask=attention_mask, loss_per_token=per_token)

    def _decode_step(self, tokens, attention_mask, cache):
        past = 0 if cache is None else cache.get_seq_length()
        with self._attention_fires():
            out = self.model(input_ids=tokens, attention_mask=attention_mask, use_cache=True,
                             position_ids=self._position_ids(attention_mask, past, tokens.shape[1]),
                             **{self._cache_kw: cache})
        new = out.get("cache") if "cache" in out else out.get("past_key_values")
        return out.logits, new

    @property
    def _cache_kw(self) -> str:
        # transformers 5.x renamed past_key_values to cache (the old name warns)
        import inspect

        params = inspect.signature(self.model.forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    @torch.no_grad()
    def generate(self, inputs=None, max_new_tokens: Optional[int] = None, *,
                 do_sample: Optional[bool] = None, temperature: Optional[float] = None,
                 top_p: Optional[float] = None, top_k: Optional[int] = None,
                 num_beams: Optional[int] = None, max_length: Optional[int] = None,
                 seed: Optional[int] = 0, stop_tokens: Optional[Sequence[int]] = None,
                 attention_mask=None, pad_token_id: Optional[int] = None,
                 use_kv_cache: bool = True, tokenizer=None, include_prompt: bool = True,
                 input_ids=None, **hf_kwargs):
        """Hugging Face ``generate`` (greedy unless ``do_sample``, ``num_beams`` beam search,
        ``max_length``/``max_new_tokens``, any other generation kwarg) with pyinterp's hooks
        active: hooks see the prompt, then each new token (with the KV cache).

        Defaults come from the model's ``generation_config`` as in HF (greedy, stop at EOS),
        except that without ``max_new_tokens``/``max_length`` 20 new tokens are generated.
        pyinterp conveniences: inputs may be a (B, T) tensor (or ``input_ids=``), token-id lists
        (left-padded here) or strings (with ``tokenizer``/``model.tokenizer``), returned in the
        same kind (see :func:`pyinterp.models.generate`); ``temperature=0`` means greedy;
        ``stop_tokens`` replaces the EOS ids; ``seed`` makes sampling reproducible without
        touching the global RNG (``seed=None``: the global RNG, as HF).
        """
        from pyinterp.models.generate import finish, prepare_prompts

        if inputs is None:
            inputs = input_ids
        if inputs is None:
            raise ValueError("generate needs inputs (a token tensor, token-id lists or strings)")
        gc = self.model.generation_config
        pad = pad_token_id if pad_token_id is not None else self.pad_token_id
        prompts = prepare_prompts(self, inputs, attention_mask, tokenizer, pad, self.W_E.device)
        if temperature == 0:  # pyinterp's spelling of greedy decoding
            temperature, do_sample = None, False
        if max_new_tokens is None and max_length is None:
            max_new_tokens = 20
        kw = dict(max_new_tokens=max_new_tokens, max_length=max_length, do_sample=do_sample,
                  temperature=temperature, top_p=top_p, top_k=top_k, num_beams=num_beams,
                  pad_token_id=pad, use_cache=use_kv_cache)
        if stop_tokens is not None:
            kw["eos_token_id"] = [int(t) for t in stop_tokens]
        kw = {k: v for k, v in kw.items() if v is not None}
        kw.update(hf_kwargs)
        T = prompts.tokens.shape[1]
        total = kw.get("max_length", T + kw.get("max_new_tokens", 0))
        if self.max_context is not None and total > self.max_context:
            raise ValueError(f"prompt length {T} + new tokens exceeds the model's context "
                             f"n_ctx={self.max_context}")
        was_training = self.model.training
        self.model.eval()
        rng = contextlib.nullcontext() if seed is None else torch.random.fork_rng(
            devices=[self.W_E.device] if self.W_E.device.type == "cuda" else [])
        try:
            with rng, self._attention_fires():
                if seed is not None:
                    torch.manual_seed(int(seed))
                out = self.model.generate(input_ids=prompts.tokens, attention_mask=prompts.mask, **kw)
        finally:
            self.model.train(was_training)
        rep = out.shape[0] // prompts.tokens.shape[0]
        if rep > 1:  # num_return_sequences: each prompt's results are consecutive rows
            prompts = type(prompts)(prompts.tokens.repeat_interleave(rep, 0),
                                    prompts.mask.repeat_interleave(rep, 0), prompts.kind, False)
        stops = kw.get("eos_token_id", gc.eos_token_id)
        stops = [stops] if isinstance(stops, int) else list(stops or ())
        return finish(self, prompts, out[:, T:], stops, include_prompt, tokenizer)


def _family(model: nn.Module) -> str:
    cfg = getattr(model, "config", None)
    mt = getattr(cfg, "model_type", None)
    if mt not in SUPPORTED_FAMILIES:
        raise ValueError(f"unsupported architecture {mt!r} ({type(model).__name__}); "
                         f"pyinterp.models.from_hf supports the families {list(SUPPORTED_FAMILIES)}")
    if model.get_output_embeddings() is None:
        raise ValueError(f"{type(model).__name__} has no language-model head: pass a causal LM "
                         "(e.g. AutoModelForCausalLM), not the base model")
    return mt


def _live_wrapper(model: nn.Module) -> Optional["HookedHF"]:
    ref = model.__dict__.get(_WRAPPER_ATTR)
    w = ref() if ref is not None else None
    # a deep copy of the raw model carries the weak reference along: it is not its wrapper
    return w if w is not None and w.model is model else None


def _check_dir(path: Path) -> None:
    import json

    if not path.is_dir():
        raise FileNotFoundError(f"model directory {str(path)!r} does not exist")
    cfg = path / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"{str(path)!r} has no config.json: not a Hugging Face model directory")
    mt = json.loads(cfg.read_text()).get("model_type")
    if mt not in SUPPORTED_FAMILIES:
        raise ValueError(f"{str(path)!r} holds an unsupported architecture {mt!r}; "
                         f"pyinterp.models.from_hf supports the families {list(SUPPORTED_FAMILIES)}")
    if not any(p.suffix in _WEIGHT_SUFFIXES for p in path.iterdir() if p.is_file()):
        raise FileNotFoundError(f"{str(path)!r} has no weights (*.safetensors or *.bin files)")


def _looks_like_hub_id(name: str) -> bool:
    """'gpt2' or 'org/name': no more than one '/', not absolute, not starting with . or ~."""
    if not name or name.startswith((".", "~", "/")) or os.sep != "/" and os.sep in name:
        return False
    parts = name.split("/")
    return len(parts) <= 2 and all(parts)


def _resolve_model_dir(name: str, revision: Optional[str]) -> Path:
    """A hub id -> its snapshot directory in the Hugging Face cache (downloading config,
    weights and tokenizer files unless HF_HUB_OFFLINE is set)."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError as e:
        raise ImportError("loading a model by hub id needs huggingface_hub: pip install "
                          "'pyinterp[hf]'") from e
    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]
    try:
        return Path(snapshot_download(name, revision=revision, allow_patterns=patterns))
    except LocalEntryNotFoundError as e:
        offline = _hub_offline()
        where = ("HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
                 if offline else "it could not be downloaded and is not in the local cache")
        raise FileNotFoundError(f"{name!r} is neither a local model directory nor loadable from "
                                f"the Hugging Face hub: {where} ({e})") from None
    except Exception as e:  # repository not found, gated, network errors: say which id failed
        raise FileNotFoundError(f"{name!r} is neither a local model directory nor loadable from "
                                f"the Hugging Face hub: {type(e).__name__}: {e}") from None


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def from_hf(model_or_path: Union[str, Path, nn.Module], tokenizer=None,
            device: Optional[Union[str, torch.device]] = None,
            dtype: Optional[torch.dtype] = None, revision: Optional[str] = None) -> HookedHF:
    """Wrap a Hugging Face causal LM with pyinterp hooks: a model object, a local directory,
    or a hub id (``"gpt2"``, ``"org/name"``, at ``revision``).

    A hub id goes through ``huggingface_hub``'s cache (downloaded once; ``HF_HUB_OFFLINE=1``
    reads the cache only). A directory is loaded with ``AutoModelForCausalLM`` (offline); its
    tokenizer is loaded too when present. A model that already has a wrapper gets that wrapper
    back (``device``/``dtype`` still move it; a ``tokenizer`` is set when it has none). Raises
    a clear error for missing directories, missing weights and unsupported families
    (supported: gpt2, llama, mistral, qwen2, qwen3).
    """
    transformers = _require_transformers()
    if isinstance(model_or_path, (str, Path)):
        path = Path(model_or_path)
        if not path.exists() and isinstance(model_or_path, str) and _looks_like_hub_id(model_or_path):
            path = _resolve_model_dir(model_or_path, revision)
        _check_dir(path)
        kw = {"local_files_only": True}
        if dtype is not None:  # transformers 5 calls it dtype, 4.x torch_dtype
            major = int(transformers.__version__.split(".")[0])
            kw["dtype" if major >= 5 else "torch_dtype"] = dtype
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path), **kw)
        if tokenizer is None and any((path / f).is_file() for f in
                                     ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
            try:
                tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            except Exception:  # a model without a usable tokenizer is still a model
                tokenizer = None
    elif isinstance(model_or_path, HookedHF):
        model = model_or_path.model if dtype is None else model_or_path.model.to(dtype)
    elif isinstance(model_or_path, nn.Module):
        model = model_or_path
        if dtype is not None:
            model = model.to(dtype)
    else:
        raise TypeError("from_hf takes a transformers model, a local directory path or a hub id, "
                        f"got {type(model_or_path).__name__}")
    if device is not None:
        model = model.to(device)
    existing = _live_wrapper(model)
    if existing is not None:
        if tokenizer is not None and existing.tokenizer is None:
            existing.tokenizer = tokenizer
        return existing
    model.eval()
    return HookedHF(model, tokenizer=tokenizer)
