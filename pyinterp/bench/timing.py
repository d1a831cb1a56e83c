"""Timing and memory measurement for the comparison table."""
from __future__ import annotations

import gc
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch


def _sync(device: Optional[torch.device]) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], *, device: Optional[torch.device] = None,
                warmup: int = 2, repeat: int = 7, min_time: float = 0.0) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeat`` runs after ``warmup``."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    start_all = time.perf_counter()
    while len(times) < repeat or (time.perf_counter() - start_all) < min_time:
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if len(times) >= 10 * repeat:
            break
    return statistics.median(times)


def interleaved_medians(fns: dict, repeat: int, *, device: Optional[torch.device] = None,
                        warmup: int = 1) -> dict:
    """Median seconds of each fn, timed round-robin (one call of each per round) so that load
    changes on a shared machine hit every implementation alike and same-run ratios stay
    meaningful. ``warmup`` untimed rounds first (allocations, optimizer state)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    _sync(device)
    times = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import resource
    return pages * resource.getpagesize()


class _PeakRSS:
    """Samples the process RSS in a thread: CPU peak memory of a call, baseline subtracted."""

    def __init__(self, interval: float = 0.0005):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self):
        gc.collect()
        self.base = _rss_bytes()
        self.peak = self.base
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def peak_memory(fn: Callable[[], object], device: Optional[torch.device] = None) -> int:
    """Extra peak memory (bytes) that one call of ``fn`` allocates above what exists before it.

    CUDA: torch's allocator peak. CPU: sampled RSS growth (an upper bound on the extra
    allocations; the glibc allocator returns large blocks to the OS, so growth is visible).
    """
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with _PeakRSS() as probe:
        fn()
    return max(0, probe.peak - probe.base)


@dataclass
class Row:
    op: str
    shape: str
    dtype: str
    impl: str
    seconds: float
    bytes_moved: Optional[int] = None
    baseline: Optional[str] = None
    baseline_seconds: Optional[float] = None
    roofline_seconds: Optional[float] = None
    peak_bytes: Optional[int] = None
    extra: dict = field(default_factory=dict)

    @property
    def gbps(self) -> Optional[float]:
        return None if not self.bytes_moved else self.bytes_moved / self.seconds / 1e9

    @property
    def speedup(self) -> Optional[float]:
        return None if not self.baseline_seconds else self.baseline_seconds / self.seconds

    @property
    def vs_roofline(self) -> Optional[float]:
        return None if not self.roofline_seconds else self.seconds / self.roofline_seconds

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d.update(gbps=self.gbps, speedup=self.speedup, vs_roofline=self.vs_roofline)
        return d
