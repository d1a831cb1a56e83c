"""pyinterp.sae.store: collecting activations to shards, shuffled streaming, resume, corruption."""
import json

import pytest
import torch

from pyinterp.sae import ActivationStore, CorruptFileError, collect, stream
from pyinterp.sae.store import activation_fn, read_manifest
from sae_testing import one_thread  # noqa: F401  (autouse: one torch thread)


def _numbered(n_batches=6, rows=10, d=4):
    """Batches whose first column numbers the rows globally (to track order and coverage)."""
    out = []
    for b in range(n_batches):
        ids = torch.arange(b * rows, (b + 1) * rows, dtype=torch.float32)
        out.append(torch.cat([ids[:, None], torch.randn(rows, d - 1)], 1))
    return out


def test_collect_and_read_cover_every_row_once_per_epoch(tmp_path):
    m = collect(tmp_path, _numbered(), shard_rows=25, seed=1, progress=False)
    assert m["complete"] and m["total_rows"] == 60
    assert [s["rows"] for s in m["shards"]] == [30, 30]  # whole producer batches per shard
    store = ActivationStore(tmp_path, batch_size=12, seed=3, epochs=2, mix_shards=1)
    seen = torch.cat([b[:, 0] for b in store])
    assert seen.numel() == 120
    for epoch in (seen[:60], seen[60:]):
        assert sorted(epoch.tolist()) == list(range(60))
    assert seen[:60].tolist() != list(range(60))          # shuffled
    again = torch.cat([b[:, 0] for b in ActivationStore(tmp_path, batch_size=12, seed=3, epochs=2,
                                                        mix_shards=1)])
    assert torch.equal(seen, again)                        # seeded: the same order
    other = torch.cat([b[:, 0] for b in ActivationStore(tmp_path, batch_size=12, seed=4, epochs=1)])
    assert other.tolist() != seen[:60].tolist()


def test_store_resumes_exactly_from_its_state(tmp_path):
    collect(tmp_path, _numbered(8), shard_rows=20, progress=False)
    full = [b for _, b in zip(range(9), ActivationStore(tmp_path, batch_size=7, seed=0))]
    s = ActivationStore(tmp_path, batch_size=7, seed=0)
    it = iter(s)
    first = [next(it) for _ in range(4)]
    state = json.loads(json.dumps(s.state_dict()))  # survives JSON
    s2 = ActivationStore(tmp_path, batch_size=7, seed=0)
    s2.load_state_dict(state)
    rest = [b for _, b in zip(range(5), s2)]
    for a, b in zip(full, first + rest):
        assert torch.equal(a, b)


def test_collect_from_a_model_with_hook_points(tmp_path):
    from pyinterp.models import Transformer, TransformerConfig

    model = Transformer(TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=40,
                                          n_ctx=8, act_fn="gelu"))
    tokens = [torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    hooks = ["blocks.0.hook_resid_post", "blocks.0.mlp.hook_post"]
    m = collect(tmp_path, model, tokens, hook_names=hooks, shard_rows=16, progress=False)
    assert m["hooks"] == {"blocks.0.hook_resid_post": {"d": 16, "dtype": "float32"},
                          "blocks.0.mlp.hook_post": {"d": 64, "dtype": "float32"}}
    store = ActivationStore(tmp_path, batch_size=8, epochs=1, seed=0)
    batch = next(iter(store))
    assert set(batch) == set(hooks)
    assert batch[hooks[0]].shape == (8, 16) and batch[hooks[1]].shape == (8, 64)
    # rows stay aligned across hooks: recompute one row's mlp output from the cache
    _, cache = model.run_with_cache(tokens[0], names_filter=hooks)
    res, mlp = cache[hooks[0]].reshape(-1, 16), cache[hooks[1]].reshape(-1, 64)
    full = ActivationStore(tmp_path, batch_size=48, epochs=1, seed=0, shuffle=False)
    b = next(iter(full))
    pos = [int(torch.nonzero((b[hooks[0]] == res[j]).all(1))[0]) for j in range(3)]
    for j, p in enumerate(pos):
        assert torch.equal(b[hooks[1]][p], mlp[j])
    single = ActivationStore(tmp_path, batch_size=8, hook_names=[hooks[0]])
    assert next(iter(single)).shape == (8, 16)


def test_activation_fn_for_callables():
    fn = activation_fn(lambda t: t.float()[..., None].repeat(1, 1, 3), ["h"])
    out = fn(torch.ones(2, 5))
    assert out["h"].shape == (10, 3)
    with pytest.raises(TypeError, match="tensor or a dict"):
        activation_fn(lambda t: 3.0)(torch.ones(2))
    with pytest.raises(ValueError, match="hook_names is required"):
        class M:
            def run_with_cache(self, t, names_filter=None):
                return None, {}
        activation_fn(M())(torch.ones(1))


def test_collection_resumes_after_interruption(tmp_path):
    data = _numbered(7, rows=5)
    calls = []

    def model(t):
        calls.append(int(t[0, 0]))
        return t

    class Interrupt(Exception):
        pass

    def flaky():
        for i, b in enumerate(data):
            if i == 5 and not calls_after_crash:
                raise Interrupt
            yield b
    calls_after_crash = []
    with pytest.raises(Interrupt):
        collect(tmp_path, model, flaky(), hook_names=["x"], shard_rows=10, progress=False)
    m = read_manifest(tmp_path)
    assert not m["complete"] and m["total_rows"] == 20 and m["inputs_consumed"] == 4
    calls.clear()
    calls_after_crash.append(True)
    m = collect(tmp_path, model, flaky(), hook_names=["x"], shard_rows=10, progress=False)
    assert calls == [20, 25, 30]           # the model ran only on inputs not yet stored
    assert m["complete"] and m["total_rows"] == 35
    ids = sorted(torch.cat([b[:, 0] for b in ActivationStore(tmp_path, 5, epochs=1)]).tolist())
    assert ids == list(range(35))


def test_truncated_and_corrupt_shards_are_reported_by_name(tmp_path):
    collect(tmp_path, _numbered(), shard_rows=30, progress=False)
    shard = tmp_path / "shard_00001.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    store = ActivationStore(tmp_path, batch_size=10, shuffle=False, mix_shards=1, epochs=1)
    with pytest.raises(CorruptFileError, match=r"shard_00001\.safetensors.*truncated"):
        list(store)
    flipped = bytearray(data)
    flipped[-3] ^= 0xFF
    shard.write_bytes(bytes(flipped))
    with pytest.raises(CorruptFileError, match=r"shard_00001\.safetensors.*sha256"):
        list(ActivationStore(tmp_path, batch_size=10, shuffle=False, mix_shards=1, epochs=1))
    shard.unlink()
    with pytest.raises(CorruptFileError, match=r"shard_00001\.safetensors is missing"):
        list(ActivationStore(tmp_path, batch_size=10, shuffle=False, mix_shards=1, epochs=1))
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptFileError, match="manifest.json is not valid JSON"):
        ActivationStore(tmp_path, batch_size=10)


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json does not exist"):
        ActivationStore(tmp_path, batch_size=4)
    collect(tmp_path, _numbered(2), progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        ActivationStore(tmp_path, batch_size=0)
    with pytest.raises(KeyError, match="not in the store"):
        ActivationStore(tmp_path, batch_size=4, hook_names=["nope"])
    with pytest.raises(ValueError, match="different row counts|same number of rows"):
        ActivationStore.from_tensors({"a": torch.zeros(3, 2), "b": torch.zeros(4, 2)})
    with pytest.raises(ValueError, match="do not match"):
        collect(tmp_path / "x", [torch.zeros(2, 3), torch.zeros(2, 4)], progress=False)


def test_in_memory_store_and_stream():
    x = torch.arange(40, dtype=torch.float32)[:, None].repeat(1, 3)
    s = ActivationStore.from_tensors(x, batch_size=8, seed=0, epochs=1)
    assert len(s) == 5
    assert sorted(torch.cat(list(s))[:, 0].tolist()) == list(range(40))
    batches = list(stream(lambda t: t, [x[i:i + 10] for i in range(0, 40, 10)], ["x"],
                          batch_size=4, buffer_rows=20, seed=0))
    got = torch.cat(batches)[:, 0]
    assert got.numel() == 40 and sorted(got.tolist()) == list(range(40))
