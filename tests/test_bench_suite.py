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
            "integrations", "circuits"]


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


@pytest.mark.parametrize("name", ["SoLUForward", "SoLULNForward", "SoLUForwardBackward",
                                  "SoLULNForwardBackward"])
def test_solu_cases_time_torch_compile_of_the_eager_code(name):
    """The compiled baseline computes what eager torch computes (forward, and the gradients)."""
    from pyinterp.bench import cases_solu

    group = next(g for g in cases_solu.groups(torch.device("cpu"), quick=True) if g.name == name)
    assert "torch_compile" in group.impls
    fns = group.make()
    with group.context():
        if not group.grad:
            torch.testing.assert_close(fns["torch_compile"](), fns["torch_eager"](),
                                       rtol=1e-5, atol=1e-5)
            return
        # the backward calls share one set of leaves: read their gradients after each call
        leaves = [c.cell_contents for c in fns["torch_eager"].__closure__ or ()
                  if isinstance(getattr(c, "cell_contents", None), torch.Tensor)]
        grads = []
        for impl in ("torch_eager", "torch_compile"):
            fns[impl]()
            grads.append([t.grad.clone() for t in leaves if t.grad is not None])
        expected = 3 if "LN" in name else 1  # x, and the LayerNorm's weight and bias
        assert len(grads[0]) == len(grads[1]) == expected
        for a, b in zip(*grads):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_table_shows_the_ratio_against_torch_compile():
    from pyinterp.bench.compare import format_table
    from pyinterp.bench.timing import Row

    rows = [Row("solu fwd", "4x4", "float32", "pyinterp [cpu]", 0.001, baseline="torch eager",
                baseline_seconds=0.003, extra={"x_compile": 2.0}),
            Row("step", "-", "float32", "pyinterp", 0.001, extra={"vs_compiled": 1.5})]
    header, _, first, second = format_table(rows).splitlines()
    assert "x compile" in header
    assert "| 2.00x" in first and "| 3.00x" in first and "| 1.50x" in second


# family: {group with a torch.compile baseline (quick CPU shapes): the eager impl it compiles}
COMPILED_BASELINES = {
    "sae": {"TopKEncode": "torch", "SparseDecode": "torch_dense",
            "SparseDecodeForwardBackward": "torch_dense", "TopKSAETrainStep": "torch_dense"},
    "attention": {"AttentionStatsT512": "torch_materialising"},
    "persona": {"PersonaProject": "torch_loop"},
}


@pytest.mark.parametrize("family", sorted(COMPILED_BASELINES))
def test_torch_compile_baseline_computes_the_eager_result(family):
    """Each group's ``torch_compile`` impl is the eager torch baseline compiled: same outputs
    (values, indices, gradients; the train step's loss before its update). No timing."""
    cases = importlib.import_module(f"pyinterp.bench.cases_{family}")
    groups = {g.name: g for g in cases.groups(torch.device("cpu"), quick=True)}
    assert {n for n, g in groups.items() if "torch_compile" in g.impls} == set(COMPILED_BASELINES[family])
    for name, eager in COMPILED_BASELINES[family].items():
        group = groups[name]
        fns = group.make()
        assert set(fns) == set(group.impls)
        with group.context():
            want, got = fns[eager](), fns["torch_compile"]()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4, msg=f"{family}.{name}")


def test_compiled_dense_sae_loss_has_the_eager_gradients():
    """The train-step group compiles cases_sae.dense_sae_loss (Adam stays eager): its loss and
    every parameter gradient equal the eager ones (tiny sizes, k not a power of two)."""
    from pyinterp.bench import cases_sae

    x, W_enc, b_enc, b_dec, W_dec = cases_sae._inputs(16, 12, 40, 3, torch.float32, torch.device("cpu"))
    results = []
    for loss_fn in (cases_sae.dense_sae_loss, torch.compile(cases_sae.dense_sae_loss, dynamic=False)):
        params = [t.clone().requires_grad_() for t in (W_enc, b_enc, b_dec, W_dec)]
        loss = loss_fn(x, 3, *params)
        results.append((loss, *torch.autograd.grad(loss, params)))
    torch.testing.assert_close(results[1], results[0], rtol=1e-4, atol=1e-5)


def test_circuits_groups_build_the_benchmarked_calls():
    """The asv calls attribute the prompt the table measures, and ours keeps the dense
    reference's nodes (the table's own check, on the smallest group)."""
    from pyinterp.bench import cases_circuits

    group = cases_circuits.groups(torch.device("cpu"), quick=True)[0]
    fns = group.make()
    with group.context():
        ours, gather, dense = fns["pyinterp"](), fns["pyinterp_gather"](), fns["dense_reference"]()
    assert ours.node_mask.tolist() == dense["node_mask"].tolist() == gather.node_mask.tolist()
    torch.testing.assert_close(ours.influence.float(), dense["influence"].float(), rtol=1e-4, atol=1e-5)
