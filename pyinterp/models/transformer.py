"""pyinterp's small decoder-only transformer with TransformerLens hook points and weights.

Parameter names and shapes follow TransformerLens (``embed.W_E`` (d_vocab, d_model),
``blocks.{i}.attn.W_Q`` (H, d_model, d_head), ``W_O`` (H, d_head, d_model), ``mlp.W_in``
(d_model, d_mlp) ...), so circuit analyses (OV/QK products) read the same tensors. SoLU MLPs
run through :func:`pyinterp.ops.solu_ln`, so they use pyinterp's fused kernels.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from pyinterp.models.config import TransformerConfig
from pyinterp.models.hooks import AttentionHookPoints, HookedModel, HookPoint

KV = Tuple[torch.Tensor, torch.Tensor]  # (k, v), each (B, S, H, d_head)

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
           "bfloat16": torch.bfloat16}


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


class LayerNorm(nn.Module):
    """LayerNorm with ``w``/``b`` and TransformerLens's ``hook_scale`` / ``hook_normalized``.

    x: (..., d) -> (..., d). Uses ``F.layer_norm`` unless a hook asks for the pieces.
    """

    def __init__(self, d: int, eps: float, dtype: torch.dtype):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d, dtype=dtype))
        self.b = nn.Parameter(torch.zeros(d, dtype=dtype))
        self.hook_scale = HookPoint()
        self.hook_normalized = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.hook_scale.active:
            return self.hook_normalized(F.layer_norm(x, (x.shape[-1],), self.w, self.b, self.eps))
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale * self.w + self.b)


def rotary_cos_sin(positions: torch.Tensor, rotary_dim: int, base: float,
                   dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """positions: (B, T) int -> cos, sin: (B, T, 1, rotary_dim) (GPT-NeoX rotate-half layout)."""
    inv = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, device=positions.device,
                                       dtype=torch.float32) / rotary_dim))
    ang = positions.to(torch.float32)[..., None] * inv  # (B, T, rotary_dim/2)
    ang = torch.cat([ang, ang], dim=-1)[:, :, None, :]
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, T, H, d_head); rotates the first ``cos.shape[-1]`` dims of each head."""
    r = cos.shape[-1]
    xr, rest = x[..., :r], x[..., r:]
    x1, x2 = xr[..., : r // 2], xr[..., r // 2:]
    rot = torch.cat([-x2, x1], dim=-1)
    out = xr * cos + rot * sin
    return torch.cat([out, rest], dim=-1) if rest.shape[-1] else out


class Attention(AttentionHookPoints):
    """Multi-head causal self-attention. x: (B, T, d_model) -> (B, T, d_model).

    The pattern is materialised only when ``hook_attn_scores`` or ``hook_pattern`` is hooked
    (or cached); otherwise attention runs through ``F.scaled_dot_product_attention``.
    """

    def __init__(self, cfg: TransformerConfig, dtype: torch.dtype):
        super().__init__()
        self.cfg = cfg
        H, d, dh = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(H, d, dh, dtype=dtype))
        self.W_K = nn.Parameter(torch.empty(H, d, dh, dtype=dtype))
        self.W_V = nn.Parameter(torch.empty(H, d, dh, dtype=dtype))
        self.W_O = nn.Parameter(torch.empty(H, dh, d, dtype=dtype))
        self.b_Q = nn.Parameter(torch.zeros(H, dh, dtype=dtype))
        self.b_K = nn.Parameter(torch.zeros(H, dh, dtype=dtype))
        self.b_V = nn.Parameter(torch.zeros(H, dh, dtype=dtype))
        self.b_O = nn.Parameter(torch.zeros(d, dtype=dtype))

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor],
                rot: Optional[Tuple[torch.Tensor, torch.Tensor]],
                past: Optional[KV] = None) -> Tuple[torch.Tensor, KV]:
        """x: (B, T, d_model); mask: (B, 1, T, S) bool (True = may attend) or None = causal."""
        B, T, _ = x.shape
        H, dh = self.cfg.n_heads, self.cfg.d_head
        # One matmul for q, k and v: (d_model, 3*H*d_head).
        w = torch.cat([self.W_Q, self.W_K, self.W_V], 0).permute(1, 0, 2).reshape(x.shape[-1], -1)
        b = torch.cat([self.b_Q, self.b_K, self.b_V], 0).reshape(-1)
        q, k, v = torch.addmm(b, x.reshape(B * T, -1), w).view(B, T, 3, H, dh).unbind(2)
        if rot is not None:
            q, k = apply_rotary(q, *rot), apply_rotary(k, *rot)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if past is not None:
            k = torch.cat([past[0], k], 1)
            v = torch.cat([past[1], v], 1)
        present = (k, v)
        if self.hook_attn_scores.active or self.hook_pattern.active:
            z = self._explicit(q, k, v, mask)
        else:
            z = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                is_causal=mask is None and T > 1).transpose(1, 2)
        z = self.hook_z(z)  # (B, T, H, d_head)
        out = torch.addmm(self.b_O, z.reshape(B * T, H * dh), self.W_O.reshape(H * dh, -1))
        return out.view(B, T, -1), present

    def _explicit(self, q, k, v, mask):
        T, S = q.shape[1], k.shape[1]
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.cfg.d_head)
        if mask is None:
            mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
        scores = self.hook_attn_scores(scores.masked_fill(~mask, float("-inf")))
        # float32 softmax for half precisions; float64 stays float64 (as SDPA does).
        pattern = torch.softmax(scores if scores.dtype == torch.float64 else scores.float(),
                                dim=-1).to(v.dtype)
        pattern = self.hook_pattern(pattern)  # (B, H, T, S)
        return torch.einsum("bhqk,bkhd->bqhd", pattern, v)


class MLP(nn.Module):
    """x: (B, T, d_model) -> (B, T, d_model); GELU, ReLU or SoLU (+LN) activation."""

    def __init__(self, cfg: TransformerConfig, dtype: torch.dtype):
        super().__init__()
        self.act_fn = cfg.act_fn
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp, dtype=dtype))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp, dtype=dtype))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model, dtype=dtype))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model, dtype=dtype))
        self.hook_pre = HookPoint()
        if cfg.act_fn == "solu_ln":
            self.hook_mid = HookPoint()
            self.ln = LayerNorm(cfg.d_mlp, cfg.ln_eps, dtype)
        self.hook_post = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        pre = self.hook_pre(torch.addmm(self.b_in, x.reshape(-1, shape[-1]), self.W_in)
                            .view(*shape[:-1], -1))
        if self.act_fn == "gelu":
            post = F.gelu(pre)
        elif self.act_fn == "relu":
            post = F.relu(pre)
        else:
            post = self._solu_ln(pre)
        post = self.hook_post(post)
        out = torch.addmm(self.b_out, post.reshape(-1, post.shape[-1]), self.W_out)
        return out.view(*shape[:-1], -1)

    def _solu_ln(self, pre):
        from pyinterp import ops

        ln = self.ln
        if not (self.hook_mid.active or ln.hook_scale.active):
            return ln.hook_normalized(ops.solu_ln(pre, ln.w, ln.b, ln.eps))
        out, mid = ops.solu_ln(pre, ln.w, ln.b, ln.eps, return_pre_ln=True)
        new_mid = self.hook_mid(mid)
        if new_mid is mid and not ln.hook_scale.active:
            return ln.hook_normalized(out)
        return ln(new_mid)  # a hook replaced the pre-LN neurons: normalise what it returned


class TransformerBlock(nn.Module):
    def __init__(self, cfg: TransformerConfig, dtype: torch.dtype):
        super().__init__()
        self.cfg = cfg
        norm = cfg.normalization == "ln"
        # Registration order = forward order (hook_names() lists them this way).
        self.hook_resid_pre = HookPoint()
        self.ln1 = LayerNorm(cfg.d_model, cfg.ln_eps, dtype) if norm else nn.Identity()
        self.attn = Attention(cfg, dtype)
        self.hook_attn_out = HookPoint()
        if not cfg.attn_only:
            self.hook_resid_mid = HookPoint()
            self.ln2 = LayerNorm(cfg.d_model, cfg.ln_eps, dtype) if norm else nn.Identity()
            self.mlp = MLP(cfg, dtype)
            self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x, mask, rot, past=None):
        resid = self.hook_resid_pre(x)
        attn_out, present = self.attn(self.ln1(resid), mask, rot, past)
        resid = resid + self.hook_attn_out(attn_out)
        if not self.cfg.attn_only:
            resid = self.hook_resid_mid(resid)
            resid = resid + self.hook_mlp_out(self.mlp(self.ln2(resid)))
        return self.hook_resid_post(resid), present


class Embed(nn.Module):
    def __init__(self, cfg, dtype):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model, dtype=dtype))


class PosEmbed(nn.Module):
    def __init__(self, cfg, dtype):
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model, dtype=dtype))


class Unembed(nn.Module):
    def __init__(self, cfg, dtype):
        super().__init__()
        if not cfg.tied_embeddings:
            self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab, dtype=dtype))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab, dtype=dtype))


class Transformer(HookedModel, nn.Module):
    """A decoder-only transformer: ``Transformer(TransformerConfig(...))``.

    ``model(tokens)`` with tokens: (B, T) int64 returns logits (B, T, d_vocab);
    ``return_type`` "loss" gives the mean next-token cross entropy, "both" ``(logits, loss)``,
    None nothing (hooks only). ``attention_mask``: (B, T) 1 = real token, 0 = padding (left
    padding for batched prompts; positions count real tokens only).
    """

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        if isinstance(cfg, dict):
            cfg = TransformerConfig.from_dict(cfg)
        if not isinstance(cfg, TransformerConfig):
            raise TypeError(f"cfg must be a TransformerConfig, got {type(cfg).__name__}")
        if cfg.n_key_value_heads != cfg.n_heads:
            raise ValueError("Transformer supports n_key_value_heads == n_heads only "
                             f"(got {cfg.n_key_value_heads} and {cfg.n_heads})")
        self.cfg = cfg
        dtype = torch_dtype(cfg.dtype)
        self.embed = Embed(cfg, dtype)
        self.hook_embed = HookPoint()
        if cfg.positional == "learned":
            self.pos_embed = PosEmbed(cfg, dtype)
            self.hook_pos_embed = HookPoint()
        self.blocks = nn.ModuleList(TransformerBlock(cfg, dtype) for _ in range(cfg.n_layers))
        if cfg.normalization == "ln":
            self.ln_final = LayerNorm(cfg.d_model, cfg.ln_eps, dtype)
        else:
            self.ln_final = nn.Identity()
        self.unembed = Unembed(cfg, dtype)
        self.tokenizer = None  # optional; generate() decodes strings with it
        self.init_weights()
        self.setup_hooks()

    # -- weights ----------------------------------------------------------------------------
    @property
    def config(self) -> TransformerConfig:
        return self.cfg

    @property
    def W_E(self) -> torch.Tensor:
        return self.embed.W_E

    @property
    def W_U(self) -> torch.Tensor:
        return self.embed.W_E.T if self.cfg.tied_embeddings else self.unembed.W_U

    def init_weights(self, seed: Optional[int] = None) -> None:
        """Normal(0, init_std) matrices (output projections scaled by 1/sqrt(2 n_layers)),
        zero biases, unit LN weights; deterministic in ``seed`` (default ``cfg.seed``)."""
        g = torch.Generator().manual_seed(self.cfg.seed if seed is None else seed)
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * max(1, self.cfg.n_layers))
        with torch.no_grad():
            for name, p in self.named_parameters():
                leaf = name.rsplit(".", 1)[-1]
                if leaf in ("w",):
                    p.fill_(1.0)
                elif leaf.startswith("b"):
                    p.zero_()
                else:
                    s = out_std if leaf in ("W_O", "W_out") else std
                    p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * s)

    # -- forward ----------------------------------------------------------------------------
    def _check_tokens(self, tokens: torch.Tensor, past_len: int = 0) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"tokens must be a torch.Tensor of token ids, got {type(tokens).__name__}")
        if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"tokens must be an integer tensor (int64), got {tokens.dtype}")
        if tokens.ndim == 1:
            tokens = tokens[None]
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape (batch, seq), got {tuple(tokens.shape)}")
        T = tokens.shape[1] + past_len
        if T > self.cfg.n_ctx and self.cfg.positional == "learned":
            raise ValueError(f"sequence length {T} exceeds the model's context n_ctx={self.cfg.n_ctx}")
        if tokens.numel() and (int(tokens.max()) >= self.cfg.d_vocab or int(tokens.min()) < 0):
            raise ValueError(f"tokens must be in [0, d_vocab={self.cfg.d_vocab}), got values in "
                             f"[{int(tokens.min())}, {int(tokens.max())}]")
        return tokens.long()

    def _positions_and_mask(self, B: int, T: int, past_len: int,
                            attention_mask: Optional[torch.Tensor], device):
        if attention_mask is None:
            pos = torch.arange(past_len, past_len + T, device=device).expand(B, T)
            return pos, None
        am = attention_mask.to(device=device, dtype=torch.bool)
        if am.shape != (B, past_len + T):
            raise ValueError(f"attention_mask must have shape (batch, past + seq) = "
                             f"{(B, past_len + T)}, got {tuple(am.shape)}")
        pos = (am.long().cumsum(-1) - 1).clamp(min=0)[:, past_len:]
        S = past_len + T
        causal = torch.ones(T, S, dtype=torch.bool, device=device).tril(past_len)
        # Padded queries attend causally to everything so that no row is empty (no NaN).
        allowed = causal & (am[:, None, :] | ~am[:, past_len:, None])
        return pos, allowed[:, None]

    def _run(self, tokens: torch.Tensor, attention_mask=None, past_kv: Optional[List[KV]] = None,
             stop_at_layer: Optional[int] = None):
        """Forward to the logits (or the residual before block ``stop_at_layer``) + new KV."""
        past_len = 0 if not past_kv else past_kv[0][0].shape[1]
        tokens = self._check_tokens(tokens, past_len)
        B, T = tokens.shape
        if attention_mask is None and past_len and T > 1:
            attention_mask = torch.ones(B, past_len + T, dtype=torch.bool, device=tokens.device)
        pos, mask = self._positions_and_mask(B, T, past_len, attention_mask, tokens.device)
        resid = self.hook_embed(F.embedding(tokens, self.embed.W_E))
        rot = None
        if self.cfg.positional == "learned":
            resid = resid + self.hook_pos_embed(F.embedding(pos, self.pos_embed.W_pos))
        else:
            rot = rotary_cos_sin(pos, self.cfg.rotary_dim, self.cfg.rotary_base, resid.dtype)
        presents = []
        for i, block in enumerate(self.blocks):
            if stop_at_layer is not None and i == stop_at_layer:
                return resid, presents
            resid, present = block(resid, mask, rot, None if not past_kv else past_kv[i])
            presents.append(present)
        if stop_at_layer is not None and stop_at_layer >= len(self.blocks):
            return resid, presents
        x = self.ln_final(resid)
        logits = torch.addmm(self.unembed.b_U, x.reshape(B * T, -1), self.W_U).view(B, T, -1)
        return logits, presents

    def forward(self, tokens: torch.Tensor, return_type: Optional[str] = "logits",
                attention_mask: Optional[torch.Tensor] = None, stop_at_layer: Optional[int] = None,
                loss_per_token: bool = False):
        """tokens: (B, T) -> logits (B, T, d_vocab) | loss | (logits, loss) | None.

        ``stop_at_layer=i`` returns the residual stream entering block i (B, T, d_model).
        """
        check_return_type(return_type)
        out, _ = self._run(tokens, attention_mask, stop_at_layer=stop_at_layer)
        if stop_at_layer is not None:
            return out
        tokens = tokens if tokens.ndim == 2 else tokens[None]
        return forward_output(out, tokens, attention_mask, return_type, loss_per_token)

    def loss(self, tokens: torch.Tensor, per_token: bool = False,
             attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Next-token cross entropy: scalar mean, or (B, T-1) with ``per_token=True``."""
        return self(tokens, return_type="loss", attention_mask=attention_mask,
                    loss_per_token=per_token)

    # -- generation -------------------------------------------------------------------------
    def _decode_step(self, tokens, attention_mask, cache):
        """One generation step: logits (B, T, V) for ``tokens`` given the KV ``cache``."""
        return self._run(tokens, attention_mask, past_kv=cache)

    def generate(self, inputs, max_new_tokens: int = 20, **kwargs):
        """Sample continuations with hooks active; see :func:`pyinterp.models.generate`."""
        from pyinterp.models.generate import generate

        return generate(self, inputs, max_new_tokens=max_new_tokens, **kwargs)

    @property
    def max_context(self) -> Optional[int]:
        return self.cfg.n_ctx if self.cfg.positional == "learned" else None


def check_return_type(return_type) -> None:
    if return_type not in ("logits", "loss", "both", None):
        raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}")


def forward_output(logits: torch.Tensor, tokens: torch.Tensor, attention_mask: Optional[torch.Tensor],
                   return_type: Optional[str], loss_per_token: bool):
    """What a hooked model's forward returns for ``return_type``: the logits, the next-token loss
    (``lm_cross_entropy``), both, or None."""
    if return_type == "logits":
        return logits
    if return_type is None:
        return None
    loss = lm_cross_entropy(logits, tokens, attention_mask, per_token=loss_per_token)
    return loss if return_type == "loss" else (logits, loss)


def lm_cross_entropy(logits: torch.Tensor, tokens: torch.Tensor,
                     attention_mask: Optional[torch.Tensor] = None,
                     per_token: bool = False) -> torch.Tensor:
    """Next-token cross entropy. logits: (B, T, V), tokens: (B, T) -> scalar or (B, T-1).

    With ``attention_mask`` (B, T), predictions of padded targets are excluded from the mean
    (and are 0 in the per-token output).
    """
    B, T, V = logits.shape
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    lp = F.cross_entropy(logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1),
                         reduction="none").view(B, T - 1)
    if attention_mask is not None:
        m = (attention_mask[:, 1:] != 0) & (attention_mask[:, :-1] != 0)
        lp = lp * m
        if per_token:
            return lp
        return lp.sum() / m.sum().clamp(min=1)
    return lp if per_token else lp.mean()
