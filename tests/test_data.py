"""pyinterp.data: default corpus, tokenizers, readers, packing/batching, synthetic sets."""
import json

import pytest
import torch

from pyinterp import data
from pyinterp.data import corpus as corpus_mod


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("pyinterp-cache")


@pytest.fixture(scope="module")
def corpus(cache):
    return data.default_corpus(cache)


def test_default_corpus_is_real_deterministic_and_cached(corpus, cache):
    docs = list(corpus)
    assert len(docs) == len(corpus) > 100
    text = "".join(docs)
    assert len(text) > 500_000  # CPython's stdlib documentation is megabytes of text
    assert " the " in text and "return" in text
    assert all(isinstance(d, str) and d.strip() for d in docs)
    # cached: a second call reads the same file, same documents, same order
    again = data.default_corpus(cache)
    assert again.path == corpus.path and list(again)[:20] == docs[:20]
    # deterministic: gathering again gives byte-identical documents
    fresh = [r["text"] for r in corpus_mod._gather()]
    assert fresh == docs
    assert corpus.path.parent == cache and corpus_mod.corpus_key() in corpus.path.name


def test_bpe_tokenizer_trained_and_cached_beside_corpus(corpus, cache):
    tok = data.get_tokenizer(vocab_size=512, cache=cache)
    assert tok.vocab_size == 512
    files = list(cache.glob("*.bpe512.json"))
    assert len(files) == 1
    s = "Return the value of the attribute, or raise an error."
    ids = tok.encode(s)
    assert tok.decode(ids) == s and len(ids) < len(s)
    tok2 = data.get_tokenizer(vocab_size=512, cache=cache)  # loads from the cache
    assert tok2.encode(s) == ids and tok2.eos_token_id == tok.eos_token_id


def test_byte_tokenizer_and_no_silent_fallback(monkeypatch):
    b = data.ByteTokenizer()
    assert b.decode(b.encode("héllo")) == "héllo" and b.vocab_size == 257
    import builtins

    real = builtins.__import__

    def no_tokenizers(name, *a, **k):
        if name == "tokenizers" or name.startswith("tokenizers."):
            raise ImportError("no tokenizers")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tokenizers)
    # a missing 'tokenizers' is an error naming it, never a quiet switch to the byte tokenizer
    with pytest.raises(ImportError, match="'tokenizers' package"):
        data.get_tokenizer(4096)
    with pytest.raises(ImportError, match="'tokenizers' package"):
        data.train_bpe(["some text"] * 4, vocab_size=300)
    assert isinstance(data.get_tokenizer(kind="bytes"), data.ByteTokenizer)


def test_tokenizer_save_load(tmp_path):
    tok = data.train_bpe(["a quick brown fox jumps over the lazy dog"] * 20, vocab_size=300)
    tok.save(tmp_path)
    back = data.load_tokenizer(tmp_path)
    assert back.encode("the lazy fox") == tok.encode("the lazy fox")
    data.ByteTokenizer().save(tmp_path / "b" if (tmp_path / "b").mkdir() is None else tmp_path)
    assert isinstance(data.load_tokenizer(tmp_path / "b"), data.ByteTokenizer)
    assert data.load_tokenizer(tmp_path / "nothing") is None


def test_packing_and_shuffled_batches():
    tok = data.ByteTokenizer()
    docs = ["abcdef", "ghij", "klmnopqrs"]
    flat = data.tokenize(docs, tok)
    assert flat.tolist() == list(b"abcdef") + [256] + list(b"ghij") + [256] + list(b"klmnopqrs") + [256]
    rows = data.pack(flat, 5)
    assert rows.shape == (len(flat) // 5, 5) and rows.dtype == torch.int64
    assert torch.equal(rows.reshape(-1), flat[: rows.numel()])
    b1 = list(data.shuffled_batches(rows, 2, seed=0))
    b2 = list(data.shuffled_batches(rows, 2, seed=0))
    b3 = list(data.shuffled_batches(rows, 2, seed=1))
    assert all(torch.equal(x, y) for x, y in zip(b1, b2))
    assert any(not torch.equal(x, y) for x, y in zip(b1, b3))
    got = torch.cat(b1).tolist()
    assert sorted(got) == sorted(rows.tolist())[: len(got)] or len(got) == 2 * (rows.shape[0] // 2)
    with pytest.raises(ValueError, match="n_ctx"):
        data.pack(flat, 1)
    with pytest.raises(ValueError, match="fewer than one row"):
        data.pack(flat[:3], 5)


def test_token_batches_stream_shuffle_seeded():
    tok = data.ByteTokenizer()
    docs = [" ".join(str(i * 1000 + j) for j in range(12)) for i in range(50)]  # no repeated rows
    unshuffled = list(data.TokenBatches(docs, tok, n_ctx=16, batch_size=4, shuffle_buffer=0))
    a = list(data.TokenBatches(docs, tok, n_ctx=16, batch_size=4, seed=0, shuffle_buffer=8))
    b = list(data.TokenBatches(docs, tok, n_ctx=16, batch_size=4, seed=0, shuffle_buffer=8))
    c = list(data.TokenBatches(docs, tok, n_ctx=16, batch_size=4, seed=1, shuffle_buffer=8))
    assert all(x.shape == (4, 16) and x.dtype == torch.int64 for x in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.equal(x, y) for x, y in zip(a, c))
    # a shuffle is a permutation of the same rows
    rows = lambda bs: sorted(map(tuple, torch.cat(bs).tolist()))
    every = rows(list(data.TokenBatches(docs, tok, n_ctx=16, batch_size=4, shuffle_buffer=0,
                                        drop_last=False)))
    assert len(a) == len(unshuffled) and set(rows(a)) <= set(every)
    assert len(set(rows(a))) == len(rows(a))  # no row twice
    # streaming: works on a generator and never needs len()
    gen = (d for d in docs)
    first = next(iter(data.TokenBatches(gen, tok, n_ctx=16, batch_size=2)))
    assert first.shape == (2, 16)
    with pytest.raises(ValueError, match="fewer than one batch"):
        list(data.TokenBatches(["tiny"], tok, n_ctx=16, batch_size=2))


def test_readers_text_jsonl_parquet_and_directories(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("first para\nline two\n\nsecond para\n")
    with open(tmp_path / "d" / "sub" / "b.jsonl", "w") as f:
        for i in range(3):
            f.write(json.dumps({"text": f"record {i}", "id": i}) + "\n")
    pa = pytest.importorskip("pyarrow", reason="the Parquet reader needs pyarrow (pip install 'pyinterp[data]')")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [f"row {i}" for i in range(2500)], "n": list(range(2500))}),
                   tmp_path / "d" / "c.parquet", row_group_size=1000)
    assert list(data.read_text(tmp_path / "d" / "a.txt", split="paragraph")) == \
        ["first para\nline two", "second para"]
    assert list(data.read_text(tmp_path / "d" / "a.txt", split="line"))[1] == "line two"
    pq_docs = list(data.read_parquet(tmp_path / "d" / "c.parquet"))
    assert len(pq_docs) == 2500 and pq_docs[-1] == "row 2499"
    docs = list(data.read_documents(tmp_path / "d"))
    # sorted walk: a.txt, c.parquet, sub/b.jsonl
    assert docs[0].startswith("first para") and docs[1] == "row 0" and docs[-1] == "record 2"
    assert len(docs) == 1 + 2500 + 3
    again = data.Documents(tmp_path / "d")
    assert list(again) == list(again)


def test_reader_bad_input(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("  \n\n ")
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02binary")
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9 au lait")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"title": "no text"}\n')
    (tmp_path / "fake.parquet").write_text("not parquet")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(ValueError, match="empty.txt.*is empty"):
        list(data.read_text(tmp_path / "empty.txt"))
    with pytest.raises(ValueError, match="only whitespace"):
        list(data.read_text(tmp_path / "blank.txt"))
    with pytest.raises(ValueError, match="bin.txt.*binary"):
        list(data.read_documents(tmp_path / "bin.txt"))
    with pytest.raises(ValueError, match="latin.txt.*not valid utf-8"):
        list(data.read_text(tmp_path / "latin.txt"))
    with pytest.raises(ValueError, match="line 2.*'text'"):
        list(data.read_jsonl(tmp_path / "bad.jsonl"))
    with pytest.raises(FileNotFoundError, match="no such"):
        list(data.read_documents(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="has no .txt"):
        list(data.read_documents(tmp_path / "emptydir"))
    pytest.importorskip("pyarrow", reason="the Parquet reader needs pyarrow (pip install 'pyinterp[data]')")
    with pytest.raises(ValueError, match="not a Parquet file"):
        list(data.read_parquet(tmp_path / "fake.parquet"))


def test_repeated_tokens_random_offset():
    r = data.repeated_tokens(64, 8, 100, seed=0, n_ctx=40, bos_token=0, low=1)
    t = r.tokens
    assert t.shape == (64, 40) and bool((t[:, 0] == 0).all())
    rows = torch.arange(64)
    for j in range(8):
        assert torch.equal(t[rows, r.first + j], t[rows, r.second + j])
    assert len(set(r.first.tolist())) > 5  # the copy does not start at a fixed position
    assert int(r.induction_mask().sum()) == 64 * 7
    again = data.repeated_tokens(64, 8, 100, seed=0, n_ctx=40, bos_token=0, low=1)
    assert torch.equal(again.tokens, t)
    fixed = data.repeated_tokens(4, 8, 100, n_ctx=40, random_offset=False)
    assert bool((fixed.first == 0).all())
    with pytest.raises(ValueError, match="fit in n_ctx"):
        data.repeated_tokens(2, 30, 100, n_ctx=40)


def test_sparse_features_and_importance():
    x = data.sparse_features(20000, 10, 0.9, seed=0)
    assert x.shape == (20000, 10) and float(x.min()) >= 0 and float(x.max()) <= 1
    density = (x > 0).float().mean().item()
    assert abs(density - 0.1) < 0.01
    per = data.sparse_features(20000, 2, torch.tensor([0.0, 0.99]), seed=0)
    assert (per[:, 0] > 0).float().mean() > 0.99 and (per[:, 1] > 0).float().mean() < 0.02
    torch.testing.assert_close(data.importance(3, 0.7), torch.tensor([1.0, 0.7, 0.49]))
    assert torch.equal(data.sparse_features(5, 4, 0.5, seed=3), data.sparse_features(5, 4, 0.5, seed=3))
    with pytest.raises(ValueError, match="sparsity"):
        data.sparse_features(2, 2, 1.5)


def test_finite_dataset_unit_norm_fixed():
    ds = data.finite_dataset(T=7, n_features=1000, sparsity=0.999, seed=2, n_test=50)
    assert ds.train.shape == (7, 1000) and ds.test.shape == (50, 1000)
    torch.testing.assert_close(ds.train.norm(dim=-1), torch.ones(7))
    torch.testing.assert_close(ds.test.norm(dim=-1), torch.ones(50))
    assert torch.equal(data.finite_dataset(7, 1000, 0.999, seed=2).train, ds.train)


def test_contrastive_prompts(tmp_path):
    s = data.contrastive_prompts("optimistic")
    assert len(s.positive) == len(s.negative) == 5
    assert len(s.questions) == len(s.eval_questions) == 20
    assert not set(s.questions) & set(s.eval_questions)
    pairs = list(s.pairs())
    assert len(pairs) == 5 * 20 and pairs[0][0] == 0
    s.save(tmp_path / "t.json")
    assert data.ContrastivePromptSet.load(tmp_path / "t.json") == s
    assert "Assistant:" in data.format_chat(s.positive[0], s.questions[0])
    assert set(data.builtin_traits()) >= {"optimistic", "formal", "sycophantic"}
    with pytest.raises(ValueError, match="unknown trait"):
        data.contrastive_prompts("evil-genius")
    with pytest.raises(ValueError, match="pairs"):
        data.ContrastivePromptSet("x", ["a"], [], ["q"])


def test_default_token_rows_cached_and_split(cache):
    rows = data.default_token_rows(n_ctx=64, vocab_size=512, cache=cache)
    assert rows.dtype == torch.int64 and rows.shape[1] == 64 and rows.shape[0] > 1000
    assert int(rows.max()) < 512
    assert len(list(cache.glob("*.bpe512.tokens.safetensors"))) == 1
    assert torch.equal(data.default_token_rows(n_ctx=64, vocab_size=512, cache=cache), rows)
    train, held = data.split_rows(rows, 0.1, seed=0)
    assert train.shape[0] + held.shape[0] == rows.shape[0]
    assert abs(held.shape[0] - rows.shape[0] * 0.1) <= 1
    with pytest.raises(ValueError, match="eval_fraction"):
        data.split_rows(rows, 1.5)


def test_periodic_tokens_tile_a_segment_with_random_period_and_phase():
    from pyinterp.data import periodic_tokens

    g = torch.Generator().manual_seed(0)
    rows = periodic_tokens(64, 40, 5, 12, 16, generator=g)
    assert rows.shape == (64, 40) and rows.dtype == torch.int64
    assert int(rows.min()) >= 0 and int(rows.max()) < 16
    periods = []
    for row in rows:
        # the smallest p in [5, 12] with row[t] == row[t - p] for every t is the row's period
        p = next(p for p in range(5, 13) if torch.equal(row[p:], row[:-p]))
        periods.append(p)
    # periods vary across rows (no fixed distance back predicts the copies) and cover the range
    assert len(set(periods)) >= 6, periods
    # same seed, same rows; bad arguments name themselves
    assert torch.equal(periodic_tokens(3, 10, 2, 4, 8, seed=1), periodic_tokens(3, 10, 2, 4, 8, seed=1))
    with pytest.raises(ValueError, match="min_period"):
        periodic_tokens(3, 10, 5, 4, 8)
    with pytest.raises(ValueError, match="d_vocab"):
        periodic_tokens(3, 10, 2, 4, 1)
