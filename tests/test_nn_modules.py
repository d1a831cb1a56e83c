"""pyinterp.nn from a PyTorch model builder's side: drop-in modules with nn.LayerNorm-style
parameters, matching the plain-torch maths forward and backward, trainable inside models."""
import pytest
import torch
import torch.nn.functional as F

from pyinterp import nn as pnn


def _solu_ln_ref(x, w, b, eps=1e-5):
    return F.layer_norm(x * x.softmax(-1), (x.shape[-1],), w, b, eps)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_solu_ln_module_matches_torch(affine, dtype):
    layer = pnn.SoLULN(37, elementwise_affine=affine, dtype=dtype)
    if affine:
        with torch.no_grad():
            layer.weight.normal_()
            layer.bias.normal_()
        ref_ln = torch.nn.LayerNorm(37, dtype=dtype)
        ref_ln.load_state_dict(layer.state_dict())  # the same parameter names and shapes
    x = torch.randn(3, 5, 37, dtype=dtype, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    y, pre = layer(x, return_pre_ln=True)
    w = layer.weight.detach().clone().requires_grad_(True) if affine else None
    b = layer.bias.detach().clone().requires_grad_(True) if affine else None
    ref = _solu_ln_ref(x2, w, b)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(y, ref, **tol)
    torch.testing.assert_close(pre, x2 * x2.softmax(-1), **tol)
    g = torch.randn_like(y)
    y.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, x2.grad, **tol)
    if affine:
        torch.testing.assert_close(layer.weight.grad, w.grad, **tol)
        torch.testing.assert_close(layer.bias.grad, b.grad, **tol)
    torch.testing.assert_close(pnn.SoLU()(x.detach()), x.detach() * x.detach().softmax(-1), **tol)


def test_solu_ln_trains_inside_a_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), pnn.SoLULN(32), torch.nn.Linear(32, 1))
    x = torch.randn(64, 8)
    y = x[:, :1] * 2 - x[:, 1:2]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(60):
        loss = F.mse_loss(model(x), y)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first
    with pytest.raises(ValueError, match=r"\(\.\.\., 32\)"):
        model[1](torch.randn(2, 31))


def _dense_topk_ref(layer, x):
    pre = (x - layer.b_dec) @ layer.W_enc + layer.b_enc
    top = pre.topk(layer.k, dim=-1)
    code = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    return code @ layer.W_dec + layer.b_dec


def test_sparse_autoencoder_layer_topk_matches_dense_torch():
    layer = pnn.SparseAutoencoder(16, 64, k=5, seed=0)
    with torch.no_grad():
        layer.b_enc.normal_(0, 0.1)
        layer.b_dec.normal_(0, 0.1)
    x = torch.randn(4, 7, 16)
    y, (v, i) = layer(x, return_code=True)
    assert v.shape == i.shape == (4, 7, 5)
    ref_layer = pnn.SparseAutoencoder(16, 64, k=5, seed=0)
    ref_layer.load_state_dict(layer.state_dict())
    ref = _dense_topk_ref(ref_layer, x)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    y.pow(2).sum().backward()
    ref.pow(2).sum().backward()
    for (name, p), q in zip(layer.named_parameters(), ref_layer.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-4, msg=name)


@pytest.mark.parametrize("jumprelu", [False, True])
def test_sparse_autoencoder_layer_threshold_codes(jumprelu):
    layer = pnn.SparseAutoencoder(16, 64, jumprelu=jumprelu, seed=1)
    if jumprelu:
        layer.threshold.fill_(0.05)
    x = torch.randn(10, 16)
    pre = (x - layer.b_dec) @ layer.W_enc + layer.b_enc
    keep = pre > (layer.threshold if jumprelu else 0)
    ref = (pre * keep) @ layer.W_dec + layer.b_dec
    torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=1e-5)
    assert ("jumprelu" if jumprelu else "relu") in repr(layer)


def test_sparse_autoencoder_layer_bad_arguments():
    with pytest.raises(ValueError, match="k must be"):
        pnn.SparseAutoencoder(8, 16, k=17)
    with pytest.raises(ValueError, match="d_sae must be"):
        pnn.SparseAutoencoder(8, 0)
    with pytest.raises(ValueError, match="jumprelu"):
        pnn.SparseAutoencoder(8, 16, k=2, jumprelu=True)
