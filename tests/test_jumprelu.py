"""JumpReLU training: the sparse band selection (ops.jumprelu_select) against a dense
selection, the straight-through estimators (jumprelu_gate / jumprelu_l0) against SAELens's
own JumpReLU and Step autograd Functions on the dense pre-activation, and JumpReLUSAE's whole
training loss (step / quadratic / tanh, with and without STE to the input) against SAELens's
JumpReLUTrainingSAE: values and every gradient."""
from __future__ import annotations

import pytest
import torch

from kernel_testing import BACKEND_PARAMS, assert_close, require
from pyinterp import ops
from pyinterp.sae import JumpReLUSAE, SAETrainer, TrainConfig

BACKENDS = BACKEND_PARAMS
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
sae_lens = pytest.importorskip("sae_lens", reason="SAELens is the oracle of the STE tests")


def _problem(n=9, d_in=12, d_sae=40, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    W = torch.randn(d_in, d_sae, generator=g, dtype=torch.float64) * 0.3
    be = torch.randn(d_sae, generator=g, dtype=torch.float64) * 0.1
    bd = torch.randn(d_in, generator=g, dtype=torch.float64) * 0.1
    thr = torch.rand(d_sae, generator=g, dtype=torch.float64) * 0.6
    return [t.to(dtype) for t in (x, W, be, bd)], thr


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("max_active", [None, 5])
def test_select_matches_dense(backend, dtype, max_active):
    device = require(backend)
    (x, W, be, bd), thr = _problem(dtype=dtype)
    eps = 0.2
    ins = [t.to(device).requires_grad_() for t in (x, W, be, bd)]
    pre, idx = ops.jumprelu_select(*ins, thr.float().to(device), eps, max_active=max_active,
                                   backend=backend)
    assert pre.dtype == torch.float32 and idx.dtype == torch.int64
    dense_in = [t.detach().double().requires_grad_() for t in (x, W, be, bd)]
    dense = (dense_in[0] - dense_in[3]) @ dense_in[1] + dense_in[2]
    sel = dense.detach() > (thr.float() - eps / 2).double()
    counts = sel.sum(1)
    width = max_active or int(counts.max())
    assert pre.shape == (x.shape[0], width)
    weight = torch.linspace(-1, 1, pre.numel()).reshape(pre.shape).double()
    loss_ours, loss_ref = 0, 0
    for r in range(x.shape[0]):
        cols = torch.nonzero(sel[r]).squeeze(1)
        order = torch.argsort(dense[r, cols].detach(), descending=True, stable=True)
        cols = cols[order][:width]
        m = cols.numel()
        assert torch.equal(idx[r, :m].cpu(), cols)
        assert torch.isinf(pre[r, m:]).all() and (pre[r, m:] < 0).all()
        assert_close(pre[r, :m], dense[r, cols].float(), dtype=dtype)
        loss_ours = loss_ours + (pre[r, :m].double() * weight[r, :m].to(device)).sum()
        loss_ref = loss_ref + (dense[r, cols] * weight[r, :m]).sum()
    for a, b in zip(torch.autograd.grad(loss_ours, ins), torch.autograd.grad(loss_ref, dense_in)):
        assert_close(a, b.to(dtype), dtype=dtype, grad=True)


@pytest.mark.parametrize("ste_to_input", [False, True])
def test_ste_gradients_match_saelens(ste_to_input):
    """Gate and step on the sparse band vs SAELens's JumpReLU / Step on the dense (N, d_sae)
    pre-activation: same values, same gradients to threshold and to the encoder's inputs."""
    from sae_lens.saes.jumprelu_sae import JumpReLU, Step

    (x, W, be, bd), thr = _problem()
    eps = 0.3
    g = torch.Generator().manual_seed(7)
    wf = torch.randn(x.shape[0], W.shape[1], generator=g, dtype=torch.float64)
    wl = torch.randn(x.shape[0], generator=g, dtype=torch.float64)

    ours_in = [t.clone().requires_grad_() for t in (x, W, be, bd, thr)]
    pre, idx = ops.jumprelu_select(*ours_in[:4], ours_in[4].detach(), eps)
    f = ops.jumprelu_gate(pre, idx, ours_in[4], eps, ste_to_input=ste_to_input)
    l0 = ops.jumprelu_l0(pre, idx, ours_in[4], eps, ste_to_input=ste_to_input)
    loss = (f * torch.gather(wf, 1, idx)).sum() + (l0 * wl).sum()

    ref_in = [t.clone().requires_grad_() for t in (x, W, be, bd, thr)]
    dense = (ref_in[0] - ref_in[3]) @ ref_in[1] + ref_in[2]
    rf = JumpReLU.apply(dense, ref_in[4], eps, ste_to_input)
    rl0 = Step.apply(dense, ref_in[4], eps, ste_to_input).sum(-1)
    ref = (rf * wf).sum() + (rl0 * wl).sum()

    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(l0, rl0)
    dense_f = torch.zeros_like(rf).scatter_add(1, idx, f.detach())
    torch.testing.assert_close(dense_f, rf.detach())
    for a, b in zip(torch.autograd.grad(loss, ours_in), torch.autograd.grad(ref, ref_in)):
        torch.testing.assert_close(a, b)


def _saelens_pair(mode, ste, d_in=10, d_sae=48, seed=0):
    from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig

    kw = dict(target_l0=6.0) if mode == "quadratic" else {}
    cfg = JumpReLUTrainingSAEConfig(d_in=d_in, d_sae=d_sae, jumprelu_bandwidth=0.1,
                                    jumprelu_sparsity_loss_mode=mode, jumprelu_ste_to_input=ste,
                                    l0_coefficient=0.7, jumprelu_tanh_scale=3.0, **kw)
    theirs = JumpReLUTrainingSAE(cfg)
    ours = JumpReLUSAE(d_in, d_sae, bandwidth=0.1, sparsity_loss=mode, ste_to_input=ste,
                       l0_coefficient=0.7, tanh_scale=3.0, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
            p = getattr(ours, name)
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            getattr(theirs, name).copy_(p)
        ours.threshold.copy_(torch.rand(d_sae, generator=g) * 0.4)
        theirs.threshold.copy_(ours.threshold)
    return ours, theirs


@pytest.mark.parametrize("mode", ["step", "quadratic", "tanh"])
@pytest.mark.parametrize("ste", [False, True], ids=["deepmind", "ste_to_input"])
def test_training_loss_matches_saelens(mode, ste):
    from sae_lens.saes.sae import TrainStepInput

    ours, theirs = _saelens_pair(mode, ste)
    x = torch.randn(24, 10, generator=torch.Generator().manual_seed(1))
    res = ours.train().loss(x)
    out = theirs.training_forward_pass(TrainStepInput(
        sae_in=x, coefficients={"l0": 0.7}, dead_neuron_mask=None, n_training_steps=0,
        is_logging_step=False))
    torch.testing.assert_close(res.mse, out.losses["mse_loss"])
    torch.testing.assert_close(res.sparsity, out.losses["l0_loss"])
    res.total.backward()
    out.loss.backward()
    for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
        torch.testing.assert_close(getattr(ours, name).grad, getattr(theirs, name).grad,
                                   atol=1e-5, rtol=1e-4, msg=name)


def test_trainer_trains_the_threshold_towards_target_l0():
    """SAETrainer no longer freezes a JumpReLU threshold: thresholds move, the quadratic
    penalty pulls L0 towards its target, and they stay >= 0."""
    from sae_testing import sparse_data

    sae = JumpReLUSAE(16, 64, sparsity_loss="quadratic", target_l0=4.0, l0_coefficient=0.05,
                      bandwidth=0.1, init_l0=20.0, seed=0)
    data = [sparse_data(128, 16, seed=i) for i in range(241)]
    tr = SAETrainer(sae, data, TrainConfig(steps=240, lr=3e-3, progress=False, log_every=30))
    before = sae.threshold.detach().clone()
    tr.run()
    assert not torch.equal(before, sae.threshold.detach())
    assert (sae.threshold >= 0).all()
    l0 = [h["sae"]["l0"] for h in tr.history]
    # the encoder first grows L0 (~40), then the trained thresholds pull it towards 4
    assert max(l0) > 30 and l0[-1] < 12, l0


def test_pre_act_loss_matches_saelens():
    """Anthropic's pre-activation loss for dead latents, as SAELens computes it (its formula on
    the dense pre-activation, restricted to the dead mask)."""
    from sae_lens.saes.jumprelu_sae import calculate_pre_act_loss

    ours, theirs = _saelens_pair("step", False)
    ours.cfg.pre_act_loss_coefficient = 0.3
    x = torch.randn(16, 10, generator=torch.Generator().manual_seed(2))
    dead = torch.zeros(48, dtype=torch.bool)
    dead[[1, 5, 7, 30]] = True
    res = ours.train().loss(x, dead_mask=dead)
    pre = (x - theirs.b_dec) @ theirs.W_enc + theirs.b_enc
    ref = calculate_pre_act_loss(0.3, theirs.threshold, pre, dead, theirs.W_dec.norm(dim=1))
    torch.testing.assert_close(res.aux, ref)
    assert ours.uses_dead_mask
    g = torch.autograd.grad(res.aux, [ours.threshold, ours.W_enc])
    rg = torch.autograd.grad(ref, [theirs.threshold, theirs.W_enc])
    for a, b in zip(g, rg):
        torch.testing.assert_close(a, b)
