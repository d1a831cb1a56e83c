"""Data: the default corpus, tokenizers, readers for the user's files, packed token batches
and synthetic data sets for the papers' experiments.

    from pyinterp import data
    docs = data.default_corpus()                 # stdlib documentation text, cached
    tok = data.get_tokenizer(vocab_size=4096)    # BPE trained on it, cached beside it
    rows = data.packed_dataset(docs, tok, n_ctx=256)   # (N, 256) int64
"""
from pyinterp.data._cache import cache_dir
from pyinterp.data.batches import (
    TokenBatches,
    default_token_rows,
    pack,
    packed_dataset,
    shuffled_batches,
    split_rows,
    tokenize,
)
from pyinterp.data.corpus import default_corpus
from pyinterp.data.prompts import (
    ContrastivePromptSet,
    builtin_traits,
    contrastive_prompts,
    format_chat,
)
from pyinterp.data.readers import Documents, read_documents, read_jsonl, read_parquet, read_text
from pyinterp.data.synthetic import (
    FiniteDataset,
    RepeatedTokens,
    finite_dataset,
    importance,
    periodic_tokens,
    repeated_tokens,
    sparse_features,
)
from pyinterp.data.tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    get_tokenizer,
    load_tokenizer,
    train_bpe,
)

__all__ = [
    "BPETokenizer",
    "ByteTokenizer",
    "ContrastivePromptSet",
    "Documents",
    "FiniteDataset",
    "RepeatedTokens",
    "TokenBatches",
    "builtin_traits",
    "cache_dir",
    "contrastive_prompts",
    "default_corpus",
    "default_token_rows",
    "finite_dataset",
    "format_chat",
    "importance",
    "read_documents",
    "read_jsonl",
    "read_parquet",
    "read_text",
    "periodic_tokens",
    "repeated_tokens",
    "sparse_features",
    "split_rows",
    "get_tokenizer",
    "load_tokenizer",
    "pack",
    "packed_dataset",
    "shuffled_batches",
    "tokenize",
    "train_bpe",
]
