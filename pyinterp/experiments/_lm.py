"""Shared pieces of the language-model reproductions (SoLU, induction heads): token rows from
the default corpus, and the held-out loss."""
from __future__ import annotations

import torch


def corpus_rows(vocab_size: int, n_ctx: int, max_rows: int, seed: int = 0, kind: str = "bpe") -> torch.Tensor:
    """(R, n_ctx) int64 rows of the default corpus, R <= max_rows, from a seeded shuffle of the
    documents (so small runs still see varied text). kind: "bpe" (the cached BPE with
    ``vocab_size`` tokens) or "bytes" (the byte tokenizer, vocab 257)."""
    from pyinterp import data

    docs = list(data.default_corpus())
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(docs), generator=g).tolist()
    tok = data.get_tokenizer(vocab_size=vocab_size, kind=kind)
    chunks, have = [], 0
    # Tokenize documents in chunks until there are enough rows.
    for start in range(0, len(order), 64):
        r = data.packed_dataset([docs[i] for i in order[start:start + 64]], tok, n_ctx=n_ctx)
        chunks.append(r)
        have += r.shape[0]
        if have >= max_rows:
            break
    return torch.cat(chunks)[:max_rows].contiguous()


def tokenizer_info(tok) -> dict:
    """What a run actually tokenised with, for metrics.json and the page (kind, vocab size)."""
    return {"kind": tok.kind, "vocab_size": int(tok.vocab_size)}


def tokenizer_text(tok) -> str:
    """e.g. 'byte-level BPE, 1024 tokens' or 'UTF-8 bytes, 257 tokens'."""
    name = {"bpe": "byte-level BPE", "bytes": "UTF-8 bytes"}.get(tok.kind, tok.kind)
    return f"{name}, {tok.vocab_size} tokens"


def tokenizer(vocab_size: int, kind: str = "bpe"):
    """The corpus tokenizer ``corpus_rows`` uses for these settings."""
    from pyinterp import data

    return data.get_tokenizer(vocab_size=vocab_size, kind=kind)


def decoder(vocab_size: int, kind: str = "bpe"):
    """token id -> display string of the corpus tokenizer."""
    tok = tokenizer(vocab_size, kind)
    return lambda i: tok.decode([i])


@torch.no_grad()
def mean_loss(model, rows: torch.Tensor, batch: int = 32) -> float:
    model.eval()
    dev = next(model.parameters()).device
    tot, n = 0.0, 0
    for s in range(0, rows.shape[0], batch):
        b = rows[s:s + batch].to(dev)
        tot += float(model.loss(b)) * b.shape[0]
        n += b.shape[0]
    return tot / max(1, n)
