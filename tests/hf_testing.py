"""Tiny randomly initialised Hugging Face causal LMs built offline, and a real Hugging Face hub
cache layout built from local files (for hub-id loading tests without a network)."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch

V = 64
FAMILIES = ["gpt2", "llama", "mistral", "qwen2", "qwen3"]


def build(family, attn="sdpa", seed=0, **extra):
    """A 2-layer model of ``family`` with d_model 32, 4 heads, vocab V, in eval mode."""
    import transformers

    torch.manual_seed(seed)
    if family == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=V, n_positions=32,
                                      bos_token_id=0, eos_token_id=0, **extra)
        cls = transformers.GPT2LMHeadModel
    else:
        names = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}[family]
        cfg = getattr(transformers, f"{names}Config")(
            num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=48, vocab_size=V, max_position_embeddings=64, head_dim=8,
            bos_token_id=0, eos_token_id=0, **extra)
        cls = getattr(transformers, f"{names}ForCausalLM")
    cfg._attn_implementation = attn
    return cls(cfg).eval()


def toks(B=2, T=9, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def add_to_hub_cache(cache: Path, repo_id: str, src: Path, revision: str = "main",
                     kind: str = "model") -> Path:
    """Lay the files under ``src`` out as huggingface_hub stores a downloaded repository:
    ``<cache>/<kind>s--org--name/blobs/<sha256>``, ``snapshots/<commit>/<path>`` symlinks to
    the blobs and ``refs/<revision>`` holding the commit. Returns the snapshot directory."""
    repo = Path(cache) / f"{kind}s--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for f in sorted(p for p in Path(src).rglob("*") if p.is_file()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            shutil.copyfile(f, blob)
        link = snap / f.relative_to(src)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * (len(f.relative_to(src).parts) + 1)) / "blobs" / blob.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snap


def tiny_tokenizer(vocab: int = V, path=None):
    """A word-level fast tokenizer over "w0" .. "w{vocab-1}" (saved to ``path`` if given)."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", eos_token="w0",
                                                pad_token="w0")
    if path is not None:
        fast.save_pretrained(path)
    return fast
