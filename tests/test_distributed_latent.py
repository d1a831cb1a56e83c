"""Latent-parallel TopK dictionaries on 2 gloo ranks vs the single-process TopKSAE."""
import pytest
import torch

import dist_workers as W
from dist_testing import run_ranks
from pyinterp._files import load_tensors
from pyinterp.distributed.latent import LatentParallelTopKSAE, shard_range

STEPS = 3


def _reference(k: int):
    """Single-process forward, gradients and training of the same dictionary."""
    sae = W.lp_dense()
    sae.cfg.k = k
    x = W.lp_inputs().requires_grad_(True)
    values, indices = sae.encode(x)
    x_hat = sae(x)
    xn = x * sae.input_scale.double()
    v, i = sae._encode(xn)
    loss = (sae._decode(v, i) - xn).pow(2).sum(-1).mean()
    loss.backward()
    ref = {"values": values.detach(), "indices": indices, "x_hat": x_hat.detach(),
           "loss": loss.detach(), "x.grad": x.grad}
    for name, p in sae.named_parameters():
        ref[f"{name}.grad"] = p.grad.clone()
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for s in range(STEPS):
        opt.zero_grad()
        xs = W.lp_inputs(16, seed=100 + s) * sae.input_scale.double()
        v, i = sae._encode(xs)
        (sae._decode(v, i) - xs).pow(2).sum(-1).mean().backward()
        torch.nn.utils.clip_grad_norm_(list(sae.parameters()), 0.5)
        opt.step()
    for name, t in sae.state_dict().items():
        ref[f"trained.{name}"] = t
    return ref


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    d = tmp_path_factory.mktemp("lp")
    ks = (5, 20)  # k below and above the shard width (19 / 18 latents)
    run_ranks(2, W.lp_check, d, ks, STEPS)
    return {k: ([load_tensors(d / f"k{k}_rank{r}.safetensors") for r in range(2)], _reference(k))
            for k in ks}


def _close(a, b, **kw):
    torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-9, **kw)


@pytest.mark.parametrize("k", [5, 20])
def test_forward_matches_single_process(results, k):
    ranks, ref = results[k]
    for r in ranks:
        _close(r["values"], ref["values"])
        pos = ref["values"] > 0  # indices of zero values are arbitrary (see module doc)
        assert torch.equal(r["indices"][pos], ref["indices"][pos])
        _close(r["x_hat"], ref["x_hat"])
        _close(r["loss"], ref["loss"])
    # the exact tie between latents 3 and 30 (on different ranks) keeps 3 first
    rows = ((ref["indices"] == 3) & (ref["values"] > 0)).any(1)
    assert rows.any()
    for r in ranks:
        idx = r["indices"][rows].tolist()
        for row in idx:
            # 30 never without 3, and never before it
            assert 30 not in row or (3 in row and row.index(3) < row.index(30))


@pytest.mark.parametrize("k", [5, 20])
def test_gradients_match_single_process(results, k):
    ranks, ref = results[k]
    for r in ranks:
        s, e = int(r["start"]), int(r["stop"])
        _close(r["x.grad"], ref["x.grad"])
        _close(r["b_dec.grad"], ref["b_dec.grad"])
        _close(r["W_enc.grad"], ref["W_enc.grad"][:, s:e])
        _close(r["b_enc.grad"], ref["b_enc.grad"][s:e])
        _close(r["W_dec.grad"], ref["W_dec.grad"][s:e])
    assert [int(r["stop"]) - int(r["start"]) for r in ranks] == [19, 18]


@pytest.mark.parametrize("k", [5, 20])
def test_training_with_global_clipping_matches_single_process(results, k):
    ranks, ref = results[k]
    for r in ranks:
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            torch.testing.assert_close(r[f"trained.{name}"], ref[f"trained.{name}"],
                                       atol=1e-9, rtol=1e-8)


def test_one_process_is_the_dense_dictionary():
    sae = W.lp_dense()
    lp = LatentParallelTopKSAE.from_dense(sae)
    x = W.lp_inputs()
    torch.testing.assert_close(lp(x), sae(x))
    dense = lp.to_dense()
    for name, t in sae.state_dict().items():
        torch.testing.assert_close(dense.state_dict()[name], t)


def test_shard_ranges_cover_every_latent_once():
    for d, w in ((37, 2), (8, 3), (5, 5), (1000, 7)):
        ranges = [shard_range(d, w, r) for r in range(w)]
        assert ranges[0][0] == 0 and ranges[-1][1] == d
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="k must be <= d_sae"):
        LatentParallelTopKSAE(4, 3, 4)
    with pytest.raises(ValueError, match="d_in"):
        LatentParallelTopKSAE(0, 3, 1)
    lp = LatentParallelTopKSAE(4, 8, 2)
    with pytest.raises(ValueError, match="x must have shape"):
        lp(torch.randn(3, 5))
    with pytest.raises(TypeError, match="x must be a floating-point"):
        lp(torch.ones(3, 4, dtype=torch.int64))
    from pyinterp.sae import ReLUSAE

    with pytest.raises(ValueError, match="TopK"):
        LatentParallelTopKSAE.from_dense(ReLUSAE(4, 8))
