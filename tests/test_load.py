"""Load test (short variant of benchmarks/load_test.py): the streaming persona monitor and
attention statistics over many sequences keep memory flat (no growth trend)."""
import importlib.util
from pathlib import Path

import pytest


def _load_test():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "load_test.py"
    spec = importlib.util.spec_from_file_location("pyinterp_load_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("backend", ["cpu"])
def test_monitor_and_attention_stats_keep_memory_flat(backend):
    from kernel_testing import require

    require(backend)
    lt = _load_test()
    res = lt.run(sequences=1600, batch=40, ctx=32, every=200, backend=backend, verbose=False)
    assert len(res["trace"]) == 8
    # RSS oscillates by ~4 MiB (allocator caching); a leak shows as a rising ceiling: the
    # peak of the second half may not exceed the first half's by more than that noise
    # (resolution ~3 KiB per sequence here; benchmarks/load_test.py runs 10,000)
    rss = [p[1] for p in res["trace"]]
    half = len(rss) // 2
    assert max(rss[half:]) - max(rss[:half]) < 5, res["trace"]
    assert res["growth_mib"] < 8, res["trace"]
    assert all(x == x for row in res["mean_projection"] for x in row)  # real numbers came out
