"""The asv suite is generated from the bench cases (pyinterp/bench/suite.py): each family's
benchmark module yields its classes, with the registry's backends among the implementations.
Nothing is timed here (benchmarks are not tests)."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

from pyinterp.bench.backends import timed_backends

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ["solu", "sae", "sae_train", "attention", "persona", "models", "dispatch", "dictionaries",
            "integrations"]


@pytest.mark.parametrize("family", FAMILIES)
def test_asv_module_is_generated_from_the_cases(family, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop(f"benchmarks.{family}", None)
    module = importlib.import_module(f"benchmarks.{family}")
    cases = importlib.import_module(f"pyinterp.bench.cases_{family}")
    expected = [g for g in cases.groups(torch.device("cpu"), quick=False) if g.asv]
    classes = {k: v for k, v in vars(module).items() if isinstance(v, type)}
    assert set(classes) == {g.name for g in expected}
    for group in expected:
        cls = classes[group.name]
        assert cls.params == [list(group.impls)] and callable(cls.time_run)
    source = (ROOT / "benchmarks" / "benchmarks" / f"{family}.py").read_text()
    assert "asv_classes" in source and "torch.randn" not in source  # no shapes of its own


def test_cases_time_every_backend_the_registry_offers():
    from pyinterp.bench import cases_sae, cases_solu

    backends = timed_backends("solu_ln", "cpu")
    for group in cases_solu.groups(torch.device("cpu")):
        assert set(backends) <= set(group.impls)
    enc = next(g for g in cases_sae.groups(torch.device("cpu")) if g.name == "TopKEncode")
    assert set(timed_backends("topk_encode", "cpu")) <= set(enc.impls)
