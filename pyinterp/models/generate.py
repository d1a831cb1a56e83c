"""Sampling with hooks active (steering during generation), batched over variable-length prompts.

Works for every pyinterp model that implements ``_decode_step(tokens, attention_mask, cache)
-> (logits (B, T, V), cache)``: :class:`~pyinterp.models.Transformer` and the adapters. Prompts
are left-padded and masked; with the KV cache (default) the prompt runs once and each new
token is one step, so a hook sees the prompt as (B, T_prompt, ...) and then each generated
token as (B, 1, ...).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

import torch

Prompt = Union[torch.Tensor, Sequence[int], str]


def _tokenizer_of(model, tokenizer):
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError("string prompts need a tokenizer: pass tokenizer=... or set model.tokenizer")
    return tok


def _encode(tok, text: str) -> List[int]:
    ids = tok.encode(text)
    return list(getattr(ids, "ids", ids))


def _left_pad(seqs: List[List[int]], pad: int, device) -> tuple:
    T = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), T), pad, dtype=torch.long, device=device)
    mask = torch.zeros((len(seqs), T), dtype=torch.long, device=device)
    for i, s in enumerate(seqs):
        if s:
            tokens[i, T - len(s):] = torch.as_tensor(s, dtype=torch.long)
            mask[i, T - len(s):] = 1
    return tokens, mask


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, top_k: Optional[int],
                generator: torch.Generator) -> torch.Tensor:
    """logits: (B, V) -> token ids (B,). temperature 0 = greedy."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass before it already reaches top_p (the top token always stays).
        drop = probs.cumsum(-1) - probs >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


@dataclass
class Prompts:
    """Prompts as a left-padded batch, and how to give results back (the input's kind)."""

    tokens: torch.Tensor  # (B, T) left-padded
    mask: torch.Tensor  # (B, T) 1 = real token
    kind: str  # "tensor" | "list" | "str"
    single: bool  # one prompt given (not a batch): return one result


def prepare_prompts(model, inputs, attention_mask=None, tokenizer=None, pad: int = 0,
                    device=None) -> Prompts:
    """A (B, T) tensor (+ optional mask), token-id lists or string(s) -> :class:`Prompts`."""
    kind, single = "tensor", False
    if isinstance(inputs, str):
        inputs, single = [inputs], True
    if isinstance(inputs, torch.Tensor):
        tokens = inputs if inputs.ndim == 2 else inputs[None]
        single = inputs.ndim == 1
        tokens = tokens.to(device).long()
        mask = (torch.ones_like(tokens) if attention_mask is None
                else attention_mask.to(device).long().reshape(tokens.shape))
        return Prompts(tokens, mask, kind, single)
    inputs = list(inputs)
    if not inputs:
        raise ValueError("inputs is empty: give at least one prompt")
    if all(isinstance(p, str) for p in inputs):
        kind = "str"
        tok = _tokenizer_of(model, tokenizer)
        seqs = [_encode(tok, p) for p in inputs]
    else:
        kind = "list"
        seqs = [[int(t) for t in (p.tolist() if isinstance(p, torch.Tensor) else p)] for p in inputs]
    if any(len(s) == 0 for s in seqs):
        raise ValueError("every prompt needs at least one token")
    tokens, mask = _left_pad(seqs, pad, device)
    return Prompts(tokens, mask, kind, single)


def finish(model, prompts: Prompts, gen_tokens: torch.Tensor, stops, include_prompt: bool,
           tokenizer=None):
    """Generated tokens (B, n_new) -> the result in the prompts' kind (see :func:`generate`);
    list/str results end at the first stop token and drop the prompt's padding."""
    tokens, mask = prompts.tokens, prompts.mask
    if prompts.kind == "tensor":
        out = torch.cat([tokens, gen_tokens], 1) if include_prompt else gen_tokens
        return out[0] if prompts.single else out
    stops = set(int(t) for t in (stops or ()))
    results = []
    for i in range(tokens.shape[0]):
        g = gen_tokens[i].tolist()
        for j, t in enumerate(g):
            if t in stops:
                g = g[: j + 1]
                break
        p = tokens[i][mask[i].bool()].tolist()
        results.append(p + g if include_prompt else g)
    if prompts.kind == "str":
        tok = _tokenizer_of(model, tokenizer)
        results = [tok.decode(r) for r in results]
    return results[0] if prompts.single else results


@torch.no_grad()
def generate(model, inputs, max_new_tokens: int = 20, temperature: float = 1.0,
             top_p: float = 1.0, top_k: Optional[int] = None, seed: Optional[int] = 0,
             stop_tokens: Optional[Sequence[int]] = None, attention_mask=None,
             pad_token_id: Optional[int] = None, use_kv_cache: bool = True, tokenizer=None,
             include_prompt: bool = True, do_sample: Optional[bool] = None):
    """Continue ``inputs`` by ``max_new_tokens`` sampled tokens, with the model's hooks active.

    inputs: a (B, T) token tensor (optionally with ``attention_mask``, left padding), a list of
    token-id lists (variable lengths; left-padded here), a string or a list of strings (encoded
    with ``tokenizer`` or ``model.tokenizer``). ``do_sample=None`` samples when temperature > 0
    (temperature 0 is greedy); ``do_sample=False`` decodes greedily whatever the temperature.
    ``top_p`` nucleus and ``top_k`` filtering; ``seed`` makes sampling reproducible. A row
    stops after emitting one of ``stop_tokens`` (later positions are padding).

    Returns the same kind as given: a tensor (B, T + n_new) (padding = ``pad_token_id``), a list
    of token-id lists (without padding), or decoded string(s). ``include_prompt=False`` returns
    only the generated part.
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if do_sample is False:
        temperature = 0.0
    elif do_sample and temperature == 0:
        raise ValueError("do_sample=True needs temperature > 0")
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    stops = set(int(t) for t in (stop_tokens or ()))
    pad = pad_token_id
    if pad is None:
        pad = getattr(model, "pad_token_id", None)
        pad = 0 if pad is None else pad
    prompts = prepare_prompts(model, inputs, attention_mask, tokenizer, pad, device)
    tokens, mask = prompts.tokens, prompts.mask
    B, T = tokens.shape
    limit = getattr(model, "max_context", None)
    if limit is not None and T + max_new_tokens > limit:
        raise ValueError(f"prompt length {T} + max_new_tokens {max_new_tokens} exceeds the "
                         f"model's context n_ctx={limit}")
    gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
    done = torch.zeros(B, dtype=torch.bool, device=device)
    new = []
    was_training = model.training
    model.eval()
    try:
        cache = None
        step_tokens = tokens
        for _ in range(max_new_tokens):
            if use_kv_cache:
                logits, cache = model._decode_step(step_tokens, mask, cache)
            else:
                full = torch.cat([tokens] + new, 1) if new else tokens
                logits, _ = model._decode_step(full, mask, None)
            nxt = sample_next(logits[:, -1], temperature, top_p, top_k, gen)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            new.append(nxt[:, None])
            mask = torch.cat([mask, (~done).long()[:, None]], 1)
            if stops:
                done = done | torch.isin(nxt, torch.tensor(sorted(stops), device=device))
            step_tokens = nxt[:, None]
            if bool(done.all()):
                break
    finally:
        model.train(was_training)
    gen_tokens = torch.cat(new, 1) if new else tokens[:, :0]
    return finish(model, prompts, gen_tokens, stops, include_prompt, tokenizer)
