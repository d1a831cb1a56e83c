"""Data-parallel dictionary training and collection on 2 gloo ranks vs 1 process."""
import pytest
import torch

import dist_workers as W
from dist_testing import in_process, run_ranks
from pyinterp import distributed as D
from pyinterp._files import load_tensors
from pyinterp.sae import ActivationStore, collect
from sae_testing import one_thread, sparse_data  # noqa: F401  (one_thread: autouse)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("acts")
    batches = [sparse_data(32, W.D_IN, seed=i) for i in range(16)]
    collect(root, batches, shard_rows=64, progress=False)  # 8 shards of 64 rows
    return root


def _close(a: dict, b: dict, atol=1e-5, rtol=1e-4):
    assert set(a) == set(b)
    for k in a:
        if a[k].dtype.is_floating_point:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=rtol, msg=lambda m: f"{k}: {m}")
        else:
            assert torch.equal(a[k], b[k]), k


def test_rank_source_partitions_shards_and_concatenates_to_the_one_rank_batches(store):
    one = D.RankSource(store, 32, streams=4, seed=3)
    # each stream opens only its own shards; together they cover every shard once
    files = [s["file"] for st in one.stores.values() for s in st.shards]
    assert sorted(files) == sorted({f for f in files}) and len(files) == 8
    b = one.next_batch()
    assert b.shape == (32, W.D_IN)
    micro = [one.stores[s] for s in range(4)]
    assert all(st.batch_size == 8 for st in micro)


@pytest.fixture(scope="module")
def runs(store, tmp_path_factory):
    """1-process runs and one 2-rank spawn (dist_workers.dp_suite) shared by the tests below."""
    root = tmp_path_factory.mktemp("dp")
    in_process(W.dp_train, store, root / "c1", root / "one.safetensors", "both")
    in_process(W.dp_train, store, root / "ref", root / "ref.safetensors")
    in_process(W.dp_train, store, root / "b", root / "b3.safetensors", "topk", 10, 3)
    run_ranks(2, W.dp_suite, store, root, root / "acts2")
    in_process(W.dp_train, store, root / "a", root / "a.safetensors")
    return root


def test_two_ranks_train_the_same_dictionary_as_one(runs):
    one = load_tensors(runs / "one.safetensors")
    two = load_tensors(runs / "two.safetensors")
    assert int(two["tokens"]) == int(one["tokens"]) == 10 * 32
    # AuxK ran (latents were dead: counters reached the window), so global counters mattered
    assert int(one["topk.since_fired"].max()) >= 32
    _close(one, two)


def test_checkpoint_from_two_ranks_resumes_on_one_and_one_on_two(runs):
    # a: 2 ranks to step 6 (checkpoints at 3 and 6), then 1 rank to the end
    files = sorted(p.name for p in (runs / "a").iterdir())
    assert "latest.json" in files and "step_00000010" in files
    assert not [f for f in files if f.startswith(".tmp")]  # written once, atomically
    assert int(load_tensors(runs / "a6.safetensors")["step"]) == 6
    # b: 1 rank to step 3, then 2 ranks to the end
    assert int(load_tensors(runs / "b3.safetensors")["step"]) == 3
    ref = load_tensors(runs / "ref.safetensors")
    _close(ref, load_tensors(runs / "a.safetensors"))
    _close(ref, load_tensors(runs / "b.safetensors"))


def test_world_size_must_divide_streams(store):
    with pytest.raises(ValueError, match="streams"):
        D.data.rank_streams(3, 2, 0)
    with pytest.raises(ValueError, match="global_batch"):
        D.RankSource(store, 30, streams=4)
    with pytest.raises(ValueError, match="streams"):
        D.RankSource(store, 32, streams=0)
    with pytest.raises(ValueError, match="shards"):
        D.RankSource(store, 64, streams=16)


def test_collection_on_two_ranks_reads_as_one_store(runs):
    acts = runs / "acts2"
    m = D.data.read_manifest(acts)
    assert m["complete"] and m["total_rows"] == 80 and m["world_size"] == 2
    assert {s["file"].split("/")[0] for s in m["shards"]} == {"rank_000", "rank_001"}
    rows = torch.cat(list(ActivationStore(acts, 8, shuffle=False, epochs=1)))
    expected = torch.cat([sparse_data(8, W.D_IN, seed=i) for i in range(10)])
    # every input collected exactly once (rows are shuffled within shards)
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert key(rows) == key(expected)
    with pytest.raises(ValueError, match="same number of ranks"):
        D.collect(acts, lambda x: x, [], progress=False)
