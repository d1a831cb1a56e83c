"""Benchmark cases defined once: a :class:`Group` is a set of implementations timed side by side
on the same inputs. Each ``pyinterp.bench.cases_<family>`` module lists its groups
(``groups(device, quick)``); its ``run(args)`` times them for the comparison table
(``pyinterp bench``), and :func:`asv_classes` turns the same groups into the asv suite
(``benchmarks/benchmarks/<family>.py`` is one line), so shapes, inputs and baselines are
written in one place. The pyinterp implementations of a group are the backends the registry
says can run it here (``pyinterp.bench.backends``), never a hard-coded list.
"""
from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class Group:
    """name: the asv class name (unique within a family); impls: implementation names, known
    without building anything; make(): builds the inputs and returns {impl: zero-argument call}
    (called once per process); grad: the calls need autograd (else they run under no_grad);
    peakmem: asv also records peak memory; asv: part of the asv suite (False for runs too long
    to repeat); info: what the table needs besides the timings (shape, dtype, bytes...)."""

    name: str
    impls: tuple[str, ...]
    make: Callable[[], dict]
    grad: bool = False
    peakmem: bool = False
    repeat: int = 7
    warmup: int = 1
    timeout: int = 600
    asv: bool = True
    info: dict = field(default_factory=dict)

    def context(self):
        return contextlib.nullcontext() if self.grad else torch.no_grad()

    def time(self, device=None) -> tuple[dict, dict]:
        """(calls, median seconds per impl): every impl timed round-robin on one set of inputs
        (pyinterp.bench.timing.interleaved_medians), for the comparison table."""
        from pyinterp.bench.timing import interleaved_medians

        fns = self.make()
        with self.context():
            times = interleaved_medians(fns, self.repeat, device=device, warmup=self.warmup)
        return fns, times

    def peak(self, fn, device=None) -> int:
        from pyinterp.bench.timing import peak_memory

        with self.context():
            return peak_memory(fn, device)


def _asv_class(family: str, group: Group) -> type:
    made = {}

    def setup(self, impl):
        torch.set_num_threads(2)
        if "fns" not in made:
            made["fns"] = group.make()
        self.fn = made["fns"][impl]
        with group.context():
            self.fn()  # warm-up: allocations, optimizer state, thread pool

    def time_run(self, impl):
        with group.context():
            self.fn()

    attrs = {"params": [list(group.impls)], "param_names": ["impl"], "number": 1,
             "repeat": group.repeat, "timeout": group.timeout, "setup": setup,
             "time_run": time_run, "version": f"{family}.{group.name} {group.info}",
             "__doc__": f"pyinterp.bench.cases_{family}: {group.info}"}
    if group.peakmem:
        def peakmem_run(self, impl):
            with group.context():
                self.fn()
        attrs["peakmem_run"] = peakmem_run
    return type(group.name, (), attrs)


def asv_classes(family: str) -> dict[str, type]:
    """The asv benchmark classes of ``family``: its CPU groups at full size (2 threads)."""
    module = importlib.import_module(f"pyinterp.bench.cases_{family}")
    classes = {}
    for group in module.groups(torch.device("cpu"), quick=False):
        if not group.asv:
            continue
        if group.name in classes:
            raise ValueError(f"cases_{family}: two groups named {group.name!r}")
        classes[group.name] = _asv_class(family, group)
    return classes
