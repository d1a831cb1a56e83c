"""pyinterp.sae dictionary modules: encode/decode/forward/loss against dense formulas."""
import pytest
import torch

from kernel_testing import require
from pyinterp.sae import BatchTopKSAE, JumpReLUSAE, ReLUSAE, SAEConfig, TopKSAE, build
from pyinterp.sae.init import activation_scale, geometric_median
from pyinterp.sae.reference import DenseTopKSAE
from sae_testing import one_thread, sparse_data  # noqa: F401  (one_thread: autouse)

BACKENDS = [pytest.param(b, id=b) for b in ("reference", "cpu", "triton", "cuda")]
# The Triton interpreter takes ~30 s per call shape on CI-class CPUs: the batched-shape test
# runs the compiled backends only (triton is covered by the gradient and ReLU tests).
NATIVE_BACKENDS = [pytest.param(b, id=b) for b in ("reference", "cpu", "cuda")]


def _randomise(sae, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (sae.W_enc, sae.W_dec):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for p in (sae.b_enc, sae.b_dec):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return sae


def _dense_pre(sae, x):
    xn = x * sae.input_scale
    b = sae.b_dec if sae.cfg.apply_b_dec_to_input else 0
    return (xn - b) @ sae.W_enc + sae.b_enc


def _dense_recon(sae, code):
    return (code @ sae.W_dec + sae.b_dec) / sae.input_scale


@pytest.mark.parametrize("backend", NATIVE_BACKENDS)
@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_topk_matches_dense(backend, apply_b_dec):
    device = require(backend)
    sae = _randomise(TopKSAE(12, 40, k=5, seed=0, apply_b_dec_to_input=apply_b_dec, backend=backend,
                             device=device))
    sae.set_input_scale(1.7)
    x = torch.randn(3, 7, 12).to(device)
    values, indices = sae.encode(x)
    assert values.shape == indices.shape == (3, 7, 5)
    pre = _dense_pre(sae, x)
    top = torch.topk(pre, 5, dim=-1)
    torch.testing.assert_close(values, top.values.relu(), atol=1e-5, rtol=1e-5)
    code = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    torch.testing.assert_close(sae(x), _dense_recon(sae, code), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.decode(values, indices), sae(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_training_gradients_match_dense_reference(backend):
    device = require(backend)
    sae = _randomise(TopKSAE(10, 30, k=4, seed=1, backend=backend, device=device))
    ref = DenseTopKSAE.like(sae)
    x = torch.randn(25, 10).to(device)
    res = sae.loss(x)
    res.total.backward()
    ref.loss(x).backward()
    torch.testing.assert_close(res.mse, ref.loss(x).detach(), atol=1e-5, rtol=1e-5)
    for n in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(sae, n).grad, getattr(ref, n).grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_relu_code_and_weighted_l1(backend):
    device = require(backend)
    sae = _randomise(ReLUSAE(8, 24, seed=0, l1_coefficient=0.7, backend=backend, device=device))
    x = torch.randn(9, 8).to(device)
    pre = _dense_pre(sae, x)
    code = pre.relu()
    values, indices = sae.encode(x)
    dense = torch.zeros(9, 24, device=device).scatter_add(-1, indices, values)
    torch.testing.assert_close(dense, code, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae(x), _dense_recon(sae, code), atol=1e-5, rtol=1e-5)
    res = sae.loss(x, l1_scale=0.5)
    expected_l1 = 0.7 * 0.5 * (code * sae.W_dec.norm(dim=1)).sum(-1).mean()
    torch.testing.assert_close(res.sparsity, expected_l1.detach(), atol=1e-5, rtol=1e-5)
    expected_mse = (code @ sae.W_dec + sae.b_dec - x).pow(2).sum(-1).mean()
    torch.testing.assert_close(res.mse, expected_mse.detach(), atol=1e-5, rtol=1e-5)


def test_unit_decoder_projection_and_renormalisation():
    sae = ReLUSAE(6, 10, seed=0, decoder_norm="unit")
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(10))
    x = torch.randn(20, 6)
    sae.loss(x).total.backward()
    sae.project_decoder_grad()
    # the gradient left has no component along its decoder row
    torch.testing.assert_close((sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(10), atol=1e-6, rtol=0)
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.after_step()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(10))


def test_batchtopk_training_and_threshold_inference():
    sae = _randomise(BatchTopKSAE(8, 32, k=3, seed=0))
    x = torch.randn(16, 8)
    pre = _dense_pre(sae, x).relu()
    res = sae.loss(x)
    kept = torch.zeros(16, 32).scatter_add(-1, res.indices, res.values)
    top = torch.topk(pre.flatten(), 3 * 16).values
    assert int((kept > 0).sum()) == int((top > 0).sum())
    torch.testing.assert_close(kept.sum(), top.sum(), atol=1e-4, rtol=1e-5)
    sae.after_step(res)
    m = res.values[res.values > 0].min()
    torch.testing.assert_close(sae.threshold, m)          # first update: the minimum itself
    sae.after_step(res)
    torch.testing.assert_close(sae.threshold, m)          # EMA of a constant stays put
    sae.eval()                                            # inference: JumpReLU at the threshold
    v, i = sae.encode(x)
    dense = torch.zeros(16, 32).scatter_add(-1, i, v)
    torch.testing.assert_close(dense, torch.where(pre > m, pre, torch.zeros(())))


def test_jumprelu_threshold_semantics():
    sae = _randomise(JumpReLUSAE(6, 12, seed=0))
    with torch.no_grad():
        sae.threshold.copy_(torch.linspace(-0.5, 0.5, 12))
    x = torch.randn(10, 6)
    pre = _dense_pre(sae, x)
    code = pre.relu() * (pre > sae.threshold)                 # inference: SAELens's JumpReLUSAE
    torch.testing.assert_close(sae.eval()(x), _dense_recon(sae, code).detach(), atol=1e-5, rtol=1e-5)
    code = pre * (pre > sae.threshold)                        # training: JumpReLUTrainingSAE
    torch.testing.assert_close(sae.train()(x), _dense_recon(sae, code).detach(), atol=1e-5, rtol=1e-5)


def test_auxk_loss_only_when_latents_are_dead():
    sae = _randomise(TopKSAE(8, 32, k=2, seed=0, aux_k=4))
    x = torch.randn(30, 8)
    none_dead = sae.loss(x, dead_mask=torch.zeros(32, dtype=torch.bool))
    assert float(none_dead.aux.detach()) == 0.0
    dead = torch.zeros(32, dtype=torch.bool)
    dead[[3, 7, 11, 20, 21]] = True
    res = sae.loss(x, dead_mask=dead)
    assert float(res.aux.detach()) > 0
    # the AuxK term reaches the encoder only through dead latents
    sae.zero_grad()
    res.aux.backward()
    g = sae.W_enc.grad.abs().sum(0)
    assert bool((g[~dead] == 0).all()) and float(g[dead].sum()) > 0
    # dense formula: top-4 dead pre-activations reconstruct the detached residual
    pre = _dense_pre(sae, x).masked_fill(~dead, float("-inf"))
    top = torch.topk(pre, 4)
    e_hat = torch.zeros(30, 32).scatter(-1, top.indices, top.values.relu()) @ sae.W_dec
    resid = x - (res.x_hat)
    expected = (1 / 32) * min(5 / 4, 1.0) * (e_hat - resid).pow(2).sum(-1).mean()
    torch.testing.assert_close(res.aux.detach(), expected.detach(), atol=1e-5, rtol=1e-4)


def test_geometric_median_and_b_dec_init():
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [100.0, 100.0]])
    gm = geometric_median(pts)
    # robust to the outlier, unlike the mean (25.25, 25.25)
    assert float(gm.norm()) < 1.0
    sq = torch.tensor([[1.0, 1], [1, -1], [-1, 1], [-1, -1]]) + torch.tensor([3.0, -2.0])
    torch.testing.assert_close(geometric_median(sq), torch.tensor([3.0, -2.0]), atol=1e-5, rtol=0)
    x = sparse_data(200)
    sae = TopKSAE(16, 32, k=4)
    sae.set_input_scale(activation_scale(x))
    sae.init_b_dec(x, "mean")
    torch.testing.assert_close(sae.b_dec.detach(), x.mean(0) * sae.input_scale, atol=1e-5, rtol=1e-5)
    assert abs(float((x * sae.input_scale).pow(2).sum(1).mean()) - 16) < 1e-3


def test_forward_keeps_input_dtype_and_scale_honoured():
    sae = _randomise(TopKSAE(8, 16, k=3, seed=0))
    x = torch.randn(5, 8)
    y1 = sae(x)
    sae.set_input_scale(4.0)
    with torch.no_grad():  # the same map in the new units: the output must be unchanged
        sae.W_enc.div_(4.0)
        sae.W_dec.mul_(4.0)
        sae.b_dec.mul_(4.0)
    torch.testing.assert_close(sae(x), y1, atol=1e-5, rtol=1e-5)
    assert sae(x.to(torch.float64)).dtype == torch.float64


def test_per_row_normalisation_modes_reconstruct_in_input_units():
    for mode in ("constant_norm_rescale", "layer_norm"):
        sae = _randomise(ReLUSAE(8, 16, seed=0, normalize_activations=mode))
        x = torch.randn(4, 8) * 10
        xn, state = sae._normalize_in(x)
        v, i = sae.encode(x)
        y = sae.decode(v, i, state)
        torch.testing.assert_close(sae(x), y)


def test_bad_inputs_raise_naming_the_problem():
    with pytest.raises(ValueError, match="k must be in"):
        TopKSAE(8, 16, k=17)
    with pytest.raises(ValueError, match="k must be in"):
        TopKSAE(8, 16, k=0)
    with pytest.raises(ValueError, match="k is required"):
        TopKSAE(8, 16)
    with pytest.raises(ValueError, match="decoder_norm"):
        ReLUSAE(8, 16, decoder_norm="sphere")
    with pytest.raises(ValueError, match="d_sae"):
        ReLUSAE(8, 0)
    with pytest.raises(TypeError, match="dtype"):
        ReLUSAE(8, 16, dtype="int8")
    sae = TopKSAE(8, 16, k=2)
    with pytest.raises(ValueError, match=r"d_in=8"):
        sae(torch.randn(3, 9))
    with pytest.raises(TypeError, match="floating-point"):
        sae(torch.ones(3, 8, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        sae.encode([1.0] * 8)
    with pytest.raises(ValueError, match="is on meta but the dictionary is on cpu"):
        sae(torch.empty(3, 8, device="meta"))
    v, i = sae.encode(torch.randn(3, 8))
    with pytest.raises(ValueError, match="indices"):
        sae.decode(v, i + 100)
    with pytest.raises(ValueError, match="same shape"):
        sae.decode(v[:, :1], i)
    with pytest.raises(TypeError, match="int64"):
        sae.decode(v, i.float())
    with pytest.raises(ValueError, match="dead_mask"):
        sae.loss(torch.randn(3, 8), dead_mask=torch.zeros(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="architecture"):
        TopKSAE(cfg=SAEConfig(architecture="standard", d_in=4, d_sae=8))


def test_build_and_dtypes():
    for arch, cls in (("standard", ReLUSAE), ("topk", TopKSAE), ("batchtopk", BatchTopKSAE),
                      ("jumprelu", JumpReLUSAE)):
        cfg = SAEConfig(architecture=arch, d_in=6, d_sae=12, k=2 if "topk" in arch else None,
                        dtype="float64")
        sae = build(cfg)
        assert isinstance(sae, cls) and sae.W_enc.dtype == torch.float64
        assert sae(torch.randn(2, 6, dtype=torch.float64)).shape == (2, 6)
    bf = TopKSAE(8, 16, k=2, dtype="bfloat16", seed=0)
    y = bf(torch.randn(4, 8))
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


def test_resampling_dead_latents():
    from pyinterp.sae.resample import resample_dead

    sae = _randomise(ReLUSAE(8, 16, seed=0))
    x = torch.randn(40, 8)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    sae.loss(x).total.backward()
    opt.step()
    dead = torch.zeros(16, dtype=torch.bool)
    dead[[2, 9]] = True
    before = {n: p.detach().clone() for n, p in sae.named_parameters()}
    n = resample_dead(sae, dead, x, opt, generator=torch.Generator().manual_seed(0))
    assert n == 2
    torch.testing.assert_close(sae.W_dec[dead].norm(dim=1), torch.ones(2))
    # each new decoder row is a (centred, normalised) input row
    cand = x - sae.b_dec.detach()
    cand = cand / cand.norm(dim=1, keepdim=True)
    for row in sae.W_dec[dead].detach():
        assert float((cand @ row).max()) == pytest.approx(1.0, abs=1e-5)
    assert bool((sae.b_enc[dead] == 0).all())
    assert torch.equal(sae.W_dec[~dead], before["W_dec"][~dead])
    assert bool((opt.state[sae.W_dec]["exp_avg"][dead] == 0).all())
    assert bool((opt.state[sae.W_enc]["exp_avg_sq"][:, dead] == 0).all())
    assert resample_dead(sae, torch.zeros(16, dtype=torch.bool), x) == 0


@pytest.mark.parametrize("backend", [pytest.param(b, id=b) for b in ("reference", "cpu")])
@pytest.mark.parametrize("cls", [TopKSAE, ReLUSAE])
def test_loss_gradcheck_float64(backend, cls):
    device = require(backend)
    kw = {"k": 3} if cls is TopKSAE else {"l1_coefficient": 0.3}
    sae = _randomise(cls(5, 9, seed=0, dtype="float64", backend=backend, device=device, **kw))
    x = torch.randn(6, 5, dtype=torch.float64, device=device)
    params = [sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec]
    inputs = [p.detach().clone().requires_grad_(True) for p in params]

    def g(*ps):  # the loss as a function of the four parameter tensors
        sae2 = cls(5, 9, dtype="float64", backend=backend, device=device, **kw)
        del sae2.W_enc, sae2.b_enc, sae2.W_dec, sae2.b_dec
        sae2.W_enc, sae2.b_enc, sae2.W_dec, sae2.b_dec = ps
        return sae2.loss(x).total
    assert torch.autograd.gradcheck(g, inputs, eps=1e-6, atol=1e-5)
