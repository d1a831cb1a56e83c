"""No public path reads or writes out of bounds on user indices: each raises ValueError naming
the indices (before: accelerate(sae).decode_sparse passed them unchecked to the kernels)."""
import pytest
import torch

from kernel_testing import require
from pyinterp import ops
from pyinterp.sae import TopKSAE
from pyinterp.sae.metrics import DensityTracker

BAD = [48, -1, 100_000_000, -(2**62)]


@pytest.fixture(scope="module")
def sae_lens():
    return pytest.importorskip("sae_lens", reason="needs sae-lens (pip install 'pyinterp[peers]')")


@pytest.mark.parametrize("bad", BAD)
def test_accelerated_sae_lens_decode_sparse_checks_indices(sae_lens, bad):
    from pyinterp.sae import accelerate

    for arch in ("topk", "standard"):
        if arch == "topk":
            obj = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=8, d_sae=48, k=4))
        else:
            obj = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=8, d_sae=48))
        accelerate(obj)
        v = torch.ones(3, 4)
        i = torch.tensor([[0, 1, 2, 3], [4, 5, bad, 7], [8, 9, 10, 11]])
        with pytest.raises(ValueError, match=r"indices must lie in \[0, 48\)"):
            obj.decode_sparse(v, i)
        with pytest.raises(ValueError, match="same shape"):
            obj.decode_sparse(v, i[:, :3])
        with pytest.raises(TypeError, match="int64 or int32"):
            obj.decode_sparse(v, i.float())
        assert obj.decode_sparse(v, i.clamp(0, 47)).shape == (3, 8)


@pytest.mark.parametrize("backend", ["reference", "cpu", "triton", "cuda", None])
@pytest.mark.parametrize("bad", BAD)
def test_sparse_ops_reject_out_of_range_indices(backend, bad):
    device = require(backend) if backend is not None else torch.device("cpu")
    v = torch.ones(2, 3, device=device)
    i = torch.tensor([[0, 1, 2], [3, bad, 5]], device=device)
    W = torch.randn(48, 8, device=device)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 48\)"):
        ops.sparse_decode(v, i, W, backend=backend)
    if backend is None:
        for call in (lambda: ops.dense_from_sparse(v, i, 48),
                     lambda: ops.update_activity(torch.zeros(48, dtype=torch.int64), i),
                     lambda: TopKSAE(8, 48, k=3).decode(v, i),
                     lambda: DensityTracker(48).update(v, i)):
            with pytest.raises(ValueError, match=r"indices must lie in \[0, 48\)"):
                call()


def test_sparse_decode_of_an_empty_code_is_the_bias():
    W, b = torch.randn(10, 4), torch.randn(4)
    v = torch.zeros(3, 0, requires_grad=True)
    out = ops.sparse_decode(v, torch.zeros(3, 0, dtype=torch.int64), W, b)
    assert torch.equal(out, b.expand(3, 4))
    out.sum().backward()
    assert v.grad.shape == (3, 0)
    assert torch.equal(ops.sparse_decode(v.detach(), torch.zeros(3, 0, dtype=torch.int64), W),
                       torch.zeros(3, 4))
