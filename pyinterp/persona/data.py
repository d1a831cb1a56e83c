"""Prompts, generation and teacher-forced batches for the persona pipeline.

A sample is a prompt (token ids: system prompt + question in the chat layout of
:func:`pyinterp.data.format_chat`) and a response (token ids). Generation is batched over
variable-length prompts (left padding, KV cache) through the model's own ``generate``.
Teacher-forced batches put prompt + response left-padded in one (B, T) tensor with an
attention mask and a response mask.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Tuple

import torch

from pyinterp.persona._model import device_of


@dataclass
class Sample:
    prompt_ids: List[int]
    response_ids: List[int]
    question: str = ""
    system: str = ""
    text: str = ""
    meta: dict = field(default_factory=dict)


def tokenizer_of(model, tokenizer=None):
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError("the persona pipeline needs a tokenizer: pass tokenizer=... or set "
                         "model.tokenizer")
    return tok


def encode(tok, text: str) -> List[int]:
    ids = tok.encode(text)
    return list(getattr(ids, "ids", ids))


def chat_prompt(tok, system: str, question: str) -> List[int]:
    from pyinterp.data.prompts import format_chat

    return encode(tok, format_chat(system, question, tok))


def generate_responses(model, prompts: Sequence[Tuple[str, str]], *, tokenizer=None,
                       n_samples: int = 1, max_new_tokens: int = 32, temperature: float = 1.0,
                       top_p: float = 1.0, batch_size: int = 16, seed: int = 0,
                       stop_tokens: Optional[Sequence[int]] = None, progress: bool = False,
                       meta: Optional[Sequence[dict]] = None) -> List[Sample]:
    """Sample ``n_samples`` responses to each (system, question), batched (``batch_size`` prompts
    of any lengths per ``generate`` call). Hooks active on the model (steering) apply."""
    tok = tokenizer_of(model, tokenizer)
    jobs = []
    for i, (system, question) in enumerate(prompts):
        ids = chat_prompt(tok, system, question)
        for s in range(n_samples):
            jobs.append((ids, system, question, dict(meta[i]) if meta else {}, s))
    out: List[Sample] = []
    starts = range(0, len(jobs), batch_size)
    if progress:
        from pyinterp._progress import progress as progress_bar

        starts = progress_bar(starts, desc="generate", unit="batch")
    for b, start in enumerate(starts):
        chunk = jobs[start:start + batch_size]
        gen = model.generate([c[0] for c in chunk], max_new_tokens=max_new_tokens,
                             temperature=temperature, do_sample=temperature > 0, top_p=top_p,
                             seed=seed + b,
                             stop_tokens=stop_tokens, include_prompt=False)
        for (ids, system, question, m, s), resp in zip(chunk, gen):
            out.append(Sample(prompt_ids=list(ids), response_ids=list(resp), question=question,
                              system=system, text=tok.decode(resp), meta={**m, "sample": s}))
    return out


def teacher_forced_batches(model, samples: Sequence[Sample], batch_size: int,
                           prompt_only: bool = False
                           ) -> Iterator[Tuple[range, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(indices, tokens (B, T), attention_mask (B, T), select (B, T) bool) per batch.

    Sequences are prompt + response (or the prompt alone), left-padded; ``select`` marks the
    response tokens (with ``prompt_only``: the prompt tokens).
    """
    device = device_of(model)
    pad = getattr(model, "pad_token_id", None) or 0
    for start in range(0, len(samples), batch_size):
        chunk = samples[start:start + batch_size]
        seqs = [s.prompt_ids + ([] if prompt_only else s.response_ids) for s in chunk]
        T = max(len(s) for s in seqs)
        tokens = torch.full((len(seqs), T), pad, dtype=torch.long)
        attn = torch.zeros(len(seqs), T, dtype=torch.long)
        sel = torch.zeros(len(seqs), T, dtype=torch.bool)
        for i, (s, seq) in enumerate(zip(chunk, seqs)):
            n = len(seq)
            if n:
                tokens[i, T - n:] = torch.as_tensor(seq, dtype=torch.long)
                attn[i, T - n:] = 1
            k = len(s.prompt_ids) if prompt_only else len(s.response_ids)
            if k:
                sel[i, T - k:] = True
        yield (range(start, start + len(chunk)), tokens.to(device), attn.to(device), sel.to(device))
