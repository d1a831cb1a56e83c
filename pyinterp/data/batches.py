"""Token batches packed to a context length: documents are tokenised, joined with the
end-of-text token and cut into rows of ``n_ctx`` tokens; rows are shuffled with a seed.

:func:`tokenize` / :func:`pack` build an in-memory (N, n_ctx) tensor (what
:func:`pyinterp.models.train` consumes); :class:`TokenBatches` streams batches from an
iterable of documents of any size with a bounded shuffle buffer.
"""
from __future__ import annotations

import random
from typing import Iterable, Iterator, List, Optional

import torch


def _encode_many(tokenizer, docs: List[str]) -> List[List[int]]:
    if hasattr(tokenizer, "encode_batch"):
        return tokenizer.encode_batch(docs)
    return [list(getattr(tokenizer.encode(d), "ids", tokenizer.encode(d))) for d in docs]


def _eos(tokenizer) -> Optional[int]:
    return getattr(tokenizer, "eos_token_id", None)


def _token_stream(docs: Iterable[str], tokenizer, add_eos: bool, chunk: int = 256) -> Iterator[List[int]]:
    eos = _eos(tokenizer) if add_eos else None
    buf: List[str] = []

    def flush():
        for ids in _encode_many(tokenizer, buf):
            yield (list(ids) + [eos]) if eos is not None else list(ids)
        buf.clear()

    for d in docs:
        if not isinstance(d, str):
            raise TypeError(f"documents must be str, got {type(d).__name__}")
        buf.append(d)
        if len(buf) >= chunk:
            yield from flush()
    if buf:
        yield from flush()


def tokenize(docs: Iterable[str], tokenizer, add_eos: bool = True) -> torch.Tensor:
    """All documents as one 1-D int64 tensor, each followed by ``tokenizer.eos_token_id``."""
    out: List[int] = []
    for ids in _token_stream(docs, tokenizer, add_eos):
        out.extend(ids)
    if not out:
        raise ValueError("no tokens: the documents are empty")
    return torch.tensor(out, dtype=torch.long)


def pack(tokens: torch.Tensor, n_ctx: int) -> torch.Tensor:
    """tokens: (L,) -> (L // n_ctx, n_ctx); the incomplete tail is dropped."""
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
    if not isinstance(n_ctx, int) or n_ctx < 2:
        raise ValueError(f"n_ctx must be an int >= 2, got {n_ctx!r}")
    n = tokens.numel() // n_ctx
    if n == 0:
        raise ValueError(f"only {tokens.numel()} tokens: fewer than one row of n_ctx={n_ctx}")
    return tokens[: n * n_ctx].view(n, n_ctx).clone()


def packed_dataset(docs: Iterable[str], tokenizer, n_ctx: int, add_eos: bool = True) -> torch.Tensor:
    """Documents -> (N, n_ctx) int64 rows, in corpus order (shuffle when batching)."""
    return pack(tokenize(docs, tokenizer, add_eos), n_ctx)


def shuffled_batches(rows: torch.Tensor, batch_size: int, seed: int = 0, epochs: Optional[int] = 1,
                     drop_last: bool = True) -> Iterator[torch.Tensor]:
    """Batches (batch_size, n_ctx) of ``rows`` in a fresh seeded permutation each epoch
    (``epochs=None`` repeats forever)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    g = torch.Generator().manual_seed(seed)
    epoch = 0
    while epochs is None or epoch < epochs:
        perm = torch.randperm(rows.shape[0], generator=g)
        stop = rows.shape[0] - (rows.shape[0] % batch_size if drop_last else 0)
        if stop <= 0:
            raise ValueError(f"{rows.shape[0]} rows are fewer than batch_size={batch_size}")
        for i in range(0, stop, batch_size):
            yield rows[perm[i: i + batch_size]]
        epoch += 1


class TokenBatches:
    """Streaming packed batches: ``for batch in TokenBatches(docs, tok, n_ctx, batch_size)``.

    batch: (batch_size, n_ctx) int64. Rows are cut from the concatenated token stream and
    shuffled through a buffer of ``shuffle_buffer`` rows with ``seed`` (0 = corpus order).
    Re-iterable when ``docs`` is (each pass is the same sequence of batches). Memory is
    bounded by the buffer, so corpora larger than memory stream.
    """

    def __init__(self, docs: Iterable[str], tokenizer, n_ctx: int, batch_size: int,
                 seed: int = 0, shuffle_buffer: int = 4096, add_eos: bool = True,
                 drop_last: bool = True):
        if not isinstance(n_ctx, int) or n_ctx < 2:
            raise ValueError(f"n_ctx must be an int >= 2, got {n_ctx!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.docs, self.tokenizer = docs, tokenizer
        self.n_ctx, self.batch_size, self.seed = n_ctx, batch_size, seed
        self.shuffle_buffer, self.add_eos, self.drop_last = shuffle_buffer, add_eos, drop_last

    def _rows(self) -> Iterator[List[int]]:
        carry: List[int] = []
        for ids in _token_stream(self.docs, self.tokenizer, self.add_eos):
            carry.extend(ids)
            while len(carry) >= self.n_ctx:
                yield carry[: self.n_ctx]
                carry = carry[self.n_ctx:]

    def _shuffled(self) -> Iterator[List[int]]:
        if self.shuffle_buffer <= 1:
            yield from self._rows()
            return
        rng = random.Random(self.seed)
        buf: List[List[int]] = []
        for row in self._rows():
            if len(buf) < self.shuffle_buffer:
                buf.append(row)
                continue
            i = rng.randrange(len(buf))
            buf[i], row = row, buf[i]
            yield row
        rng.shuffle(buf)
        yield from buf

    def __iter__(self) -> Iterator[torch.Tensor]:
        batch: List[List[int]] = []
        n = 0
        for row in self._shuffled():
            batch.append(row)
            if len(batch) == self.batch_size:
                n += 1
                yield torch.tensor(batch, dtype=torch.long)
                batch = []
        if batch and not self.drop_last:
            n += 1
            yield torch.tensor(batch, dtype=torch.long)
        if n == 0:
            raise ValueError(f"the documents give fewer than one batch of {self.batch_size} rows "
                             f"of n_ctx={self.n_ctx} tokens")


def default_token_rows(n_ctx: int = 256, vocab_size: int = 4096, kind: str = "bpe",
                       cache=None) -> torch.Tensor:
    """The default corpus tokenised with :func:`pyinterp.data.get_tokenizer` and packed into
    (N, n_ctx) int64 rows (corpus order; shuffle when batching). Cached as safetensors beside
    the corpus, so experiments get their training data in milliseconds after the first call."""
    from pyinterp._files import CorruptFileError, atomic_save_tensors, load_tensors
    from pyinterp.data.corpus import corpus_path, default_corpus
    from pyinterp.data.tokenizer import get_tokenizer

    tok = get_tokenizer(vocab_size, kind=kind, cache=cache)
    base = corpus_path(cache)
    path = base.with_name(f"{base.stem}.{tok.kind}{tok.vocab_size}.tokens.safetensors")
    if path.is_file():
        flat = load_tensors(path, "token cache", require_digest=True).get("tokens")
        if flat is None or flat.dtype != torch.int64 or flat.dim() != 1 or (
                flat.numel() and not 0 <= int(flat.min()) <= int(flat.max()) < tok.vocab_size):
            raise CorruptFileError(f"token cache {path} does not hold int64 token ids below "
                                   f"{tok.vocab_size}; delete it to tokenize again", path)
    else:
        flat = tokenize(default_corpus(cache), tok)
        atomic_save_tensors(path, {"tokens": flat})
    return pack(flat, n_ctx)


def split_rows(rows: torch.Tensor, eval_fraction: float = 0.05, seed: int = 0):
    """(train, eval) rows: a seeded random ``eval_fraction`` of the rows is held out."""
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    perm = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(seed))
    n_eval = max(1, int(round(rows.shape[0] * eval_fraction)))
    return rows[perm[n_eval:]], rows[perm[:n_eval]]
