"""The baselines of the dictionary-zoo benchmark compute the same maths as the modules they are
compared with: pyinterp.bench.cases_dictionaries's dense and sparse-gather torch losses equal
``module.loss(...).total``, value and every gradient, for each kind (tiny sizes, no compile)."""
import copy

import pytest
import torch

from pyinterp.bench import cases_dictionaries as C

TINY = dict(N=24, d_in=12, d_sae=40, k=3, layers=3, d_layer=16)


@pytest.mark.parametrize("kind", C.KINDS)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse_gather"])
def test_baselines_match_the_module(kind, sparse):
    if sparse and kind == "jumprelu":
        pytest.skip("JumpReLU has no sparse-gather torch baseline (its compiled baseline is the "
                    "dense formulation)")
    mod, x = C.build(kind, TINY)
    with torch.no_grad():  # a non-trivial state: biases and scales away from their inits
        for name, p in mod.named_parameters():
            if name != "threshold":
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    twin = copy.deepcopy(mod)
    ours = mod.loss(*x).total
    theirs = C.torch_loss(kind, twin, sparse)(*x)
    torch.testing.assert_close(theirs.float(), ours.float(), atol=1e-4, rtol=1e-4)
    g1 = torch.autograd.grad(ours, list(mod.parameters()))
    g2 = torch.autograd.grad(theirs, list(twin.parameters()), allow_unused=True)
    for (name, _), a, b in zip(mod.named_parameters(), g1, g2):
        torch.testing.assert_close(b if b is not None else torch.zeros_like(a), a, atol=1e-4,
                                   rtol=1e-3, msg=name)


@pytest.mark.parametrize("kind", C.KINDS)
def test_the_optimizer_variants_train_to_the_same_bits(kind):
    """The bench's three optimizer settings (torch's Adam, the trainer's Adam after backward,
    the trainer's optimizer in backward) are the same training step: equal parameters after
    two steps; and each step leaves no gradient behind (the peaks start from one state)."""
    mod, x = C.build(kind, TINY)
    results = []
    for optimizer in ("torch", "pyinterp", "pyinterp_in_backward"):
        m = copy.deepcopy(mod)
        step = C.train_step(m.parameters(), lambda *t, m=m: m.loss(*t).total, x, optimizer)
        step()
        step()
        assert all(p.grad is None for p in m.parameters()), optimizer
        results.append(m.state_dict())
    for other in results[1:]:
        for key, value in results[0].items():
            assert torch.equal(other[key], value), (kind, key)
    assert [g.name for g in C.groups(torch.device("cpu"))] == [C.GROUP_NAMES[k] for k in C.KINDS]
