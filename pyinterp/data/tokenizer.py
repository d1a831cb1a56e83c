"""Tokenizers: a byte-level BPE trained with ``tokenizers`` (a core dependency; cached beside the
corpus) and a plain byte-level tokenizer (``kind="bytes"``), chosen explicitly, never as a fallback.

Both expose ``encode(text) -> list[int]``, ``encode_batch``, ``decode(ids) -> str``,
``vocab_size``, ``eos_token_id`` (= ``bos_token_id`` = ``pad_token_id``: one
``<|endoftext|>`` token separates documents) and ``save(directory)``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Union

from pyinterp._files import CorruptFileError, atomic_write_json, atomic_write_text, read_json

EOT = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255, ``<|endoftext|>`` = 256 (vocab_size 257)."""

    kind = "bytes"

    def __init__(self):
        self.vocab_size = 257
        self.eos_token_id = self.bos_token_id = self.pad_token_id = 256

    def encode(self, text: str) -> List[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def save(self, directory: Union[str, Path]) -> None:
        atomic_write_text(Path(directory) / TOKENIZER_FILE,
                          json.dumps({"pyinterp_tokenizer": "bytes"}))

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=257)"


class BPETokenizer:
    """A trained ``tokenizers.Tokenizer`` (byte-level BPE) with a small, stable interface."""

    kind = "bpe"

    def __init__(self, tok):
        self._tok = tok
        self.vocab_size = tok.get_vocab_size()
        eot = tok.token_to_id(EOT)
        if eot is None:
            raise ValueError(f"tokenizer has no {EOT} token")
        self.eos_token_id = self.bos_token_id = self.pad_token_id = eot

    @property
    def backend(self):
        """The underlying ``tokenizers.Tokenizer``."""
        return self._tok

    def encode(self, text: str) -> List[int]:
        return self._tok.encode(text).ids

    def encode_batch(self, texts: Sequence[str]) -> List[List[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts))]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def save(self, directory: Union[str, Path]) -> None:
        atomic_write_text(Path(directory) / TOKENIZER_FILE, self._tok.to_str())

    @classmethod
    def from_file(cls, path: Union[str, Path]) -> "BPETokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(str(path)))

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


def _require_tokenizers() -> None:
    try:
        import tokenizers  # noqa: F401
    except ImportError as e:
        raise ImportError("the BPE tokenizer needs the 'tokenizers' package, a core dependency of "
                          "pyinterp that is not installed here: pip install tokenizers (or "
                          "reinstall pyinterp with pip install .)") from e


def train_bpe(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> BPETokenizer:
    """Train a byte-level BPE (GPT-2 style pre-tokenisation) on ``texts``; needs ``tokenizers``."""
    _require_tokenizers()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257 + 1:
        raise ValueError(f"vocab_size must be > 257 (256 bytes + {EOT}), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(tok)


def get_tokenizer(vocab_size: int = 4096, kind: str = "bpe",
                  cache: Optional[Union[str, Path]] = None):
    """The tokenizer of the default corpus.

    ``kind="bpe"``: a byte-level BPE with ``vocab_size`` tokens trained on
    :func:`pyinterp.data.default_corpus` and cached beside it (trained once, ~10 s); ImportError
    naming the package if ``tokenizers`` is missing (a silent switch to bytes would change every
    result that depends on the vocabulary). ``kind="bytes"``: the byte tokenizer (vocab 257).
    """
    if kind == "bytes":
        return ByteTokenizer()
    if kind != "bpe":
        raise ValueError(f"kind must be 'bpe' or 'bytes', got {kind!r}")
    _require_tokenizers()
    from pyinterp.data.corpus import corpus_path, default_corpus

    corpus = default_corpus(cache)
    path = corpus_path(cache).with_name(corpus_path(cache).stem + f".bpe{vocab_size}.json")
    if path.is_file():
        return _read_cached(path, vocab_size)
    tok = train_bpe(corpus, vocab_size=vocab_size)
    _write_cached(path, tok)
    return tok


CACHE_FORMAT = "pyinterp-bpe-cache-1"


def _write_cached(path: Path, tok: "BPETokenizer") -> None:
    atomic_write_json(path, {"format": CACHE_FORMAT, "vocab_size": tok.vocab_size,
                             "tokenizer": tok.backend.to_str()}, checksum=True, indent=None)


def _read_cached(path: Path, vocab_size: int) -> "BPETokenizer":
    """The cached BPE, verified (checksum, parse, vocabulary size) before use."""
    from tokenizers import Tokenizer

    hint = "; delete it to retrain the tokenizer"
    obj = read_json(path, "tokenizer cache", checksum="require")
    if obj.get("format") != CACHE_FORMAT or not isinstance(obj.get("tokenizer"), str):
        raise CorruptFileError(f"tokenizer cache {path} is not a {CACHE_FORMAT} file{hint}", path)
    try:
        tok = BPETokenizer(Tokenizer.from_str(obj["tokenizer"]))
    except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
        raise CorruptFileError(f"tokenizer cache {path} does not load ({exc}){hint}", path) from None
    if tok.vocab_size != vocab_size or obj.get("vocab_size") != vocab_size:
        raise CorruptFileError(f"tokenizer cache {path} holds a vocabulary of {tok.vocab_size} "
                               f"tokens, expected {vocab_size}{hint}", path)
    return tok


def load_tokenizer(directory: Union[str, Path]):
    """The tokenizer saved in ``directory`` by ``tokenizer.save``, or None if there is none."""
    p = Path(directory) / TOKENIZER_FILE
    if not p.is_file():
        return None
    obj = read_json(p, "tokenizer", checksum="ignore")
    if obj.get("pyinterp_tokenizer") == "bytes":
        return ByteTokenizer()
    try:
        return BPETokenizer.from_file(p)
    except Exception as exc:  # tokenizers raises a bare Exception on a bad file
        raise CorruptFileError(f"tokenizer {p} does not load ({exc})", p) from None
