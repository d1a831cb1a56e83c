"""The benchmark baseline: pyinterp's Transformer maths written with plain torch modules
(nn.Embedding, nn.Linear, nn.LayerNorm, SDPA; SoLU as x * softmax(x) then LayerNorm), no hook
points, loadable from a pyinterp Transformer so both compute the same function."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, H, dh = cfg.d_model, cfg.n_heads, cfg.d_head
        self.H, self.dh, self.act = H, dh, cfg.act_fn
        self.ln1 = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.qkv = nn.Linear(d, 3 * H * dh)
        self.out = nn.Linear(H * dh, d)
        if cfg.act_fn is not None:
            self.ln2 = nn.LayerNorm(d, eps=cfg.ln_eps)
            self.fc_in = nn.Linear(d, cfg.d_mlp)
            self.fc_out = nn.Linear(cfg.d_mlp, d)
            if cfg.act_fn == "solu_ln":
                self.ln_mlp = nn.LayerNorm(cfg.d_mlp, eps=cfg.ln_eps)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.H, self.dh).unbind(2)
        z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=True)
        x = x + self.out(z.transpose(1, 2).reshape(B, T, -1))
        if self.act is None:
            return x
        h = self.fc_in(self.ln2(x))
        if self.act == "gelu":
            h = F.gelu(h)
        elif self.act == "relu":
            h = F.relu(h)
        else:
            h = self.ln_mlp(h * torch.softmax(h, dim=-1))
        return x + self.fc_out(h)


class PlainTransformer(nn.Module):
    """tokens: (B, T) -> logits (B, T, d_vocab); learned positions, LayerNorm, untied."""

    def __init__(self, cfg):
        super().__init__()
        if cfg.positional != "learned" or cfg.normalization != "ln" or cfg.tied_embeddings:
            raise ValueError("PlainTransformer mirrors learned positions, LayerNorm, untied embeddings")
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.pos = nn.Embedding(cfg.n_ctx, cfg.d_model)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model, eps=cfg.ln_eps)
        self.unembed = nn.Linear(cfg.d_model, cfg.d_vocab)

    def forward(self, tokens):
        T = tokens.shape[1]
        x = self.embed(tokens) + self.pos(torch.arange(T, device=tokens.device))
        for b in self.blocks:
            x = b(x)
        return self.unembed(self.ln_f(x))

    def loss(self, tokens):
        logits = self(tokens)
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))

    @classmethod
    @torch.no_grad()
    def like(cls, model) -> "PlainTransformer":
        """The same weights as a pyinterp :class:`~pyinterp.models.Transformer`."""
        cfg = model.cfg
        p = cls(cfg).to(model.embed.W_E.dtype)
        p.embed.weight.copy_(model.embed.W_E)
        p.pos.weight.copy_(model.pos_embed.W_pos)
        for pb, b in zip(p.blocks, model.blocks):
            a = b.attn
            w = torch.cat([a.W_Q, a.W_K, a.W_V], 0).permute(1, 0, 2).reshape(cfg.d_model, -1)
            pb.qkv.weight.copy_(w.T)
            pb.qkv.bias.copy_(torch.cat([a.b_Q, a.b_K, a.b_V], 0).reshape(-1))
            pb.out.weight.copy_(a.W_O.reshape(-1, cfg.d_model).T)
            pb.out.bias.copy_(a.b_O)
            pb.ln1.weight.copy_(b.ln1.w)
            pb.ln1.bias.copy_(b.ln1.b)
            if cfg.act_fn is not None:
                pb.ln2.weight.copy_(b.ln2.w)
                pb.ln2.bias.copy_(b.ln2.b)
                pb.fc_in.weight.copy_(b.mlp.W_in.T)
                pb.fc_in.bias.copy_(b.mlp.b_in)
                pb.fc_out.weight.copy_(b.mlp.W_out.T)
                pb.fc_out.bias.copy_(b.mlp.b_out)
                if cfg.act_fn == "solu_ln":
                    pb.ln_mlp.weight.copy_(b.mlp.ln.w)
                    pb.ln_mlp.bias.copy_(b.mlp.ln.b)
        p.ln_f.weight.copy_(model.ln_final.w)
        p.ln_f.bias.copy_(model.ln_final.b)
        p.unembed.weight.copy_(model.W_U.T)
        p.unembed.bias.copy_(model.unembed.b_U)
        return p
