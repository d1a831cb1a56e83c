"""accelerate() on SAELens training SAEs, from a SAELens user's side: the same
``training_forward_pass`` outputs, losses and gradients as plain SAELens (TopK, BatchTopK,
Standard, JumpReLU; sparse kernel path and dense fallback), the same parameters after a few
optimiser steps of SAELens's own step sequence, and fallbacks for what the kernels do not do."""
import copy
import warnings

import pytest
import torch

sae_lens = pytest.importorskip("sae_lens", reason="needs sae-lens (pip install 'pyinterp[peers]')")
from sae_lens.saes.sae import TrainStepInput  # noqa: E402

from pyinterp.sae import _sparse_grad, accelerate, restore  # noqa: E402

D_IN, D_SAE, N = 16, 96, 40
L = sae_lens


def _make(kind, dtype="float64", **cfg):
    common = dict(d_in=D_IN, d_sae=D_SAE, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "topk":
            sae = L.TopKTrainingSAE(L.TopKTrainingSAEConfig(k=4, **common, **cfg))
        elif kind == "batchtopk":
            sae = L.BatchTopKTrainingSAE(L.BatchTopKTrainingSAEConfig(k=3.5, **common, **cfg))
        elif kind == "standard":
            sae = L.StandardTrainingSAE(L.StandardTrainingSAEConfig(l1_coefficient=0.3, **common, **cfg))
        else:
            sae = L.JumpReLUTrainingSAE(L.JumpReLUTrainingSAEConfig(
                l0_coefficient=0.2, jumprelu_init_threshold=0.3, jumprelu_bandwidth=0.2, **common, **cfg))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(sae.W_enc.shape, generator=g, dtype=sae.W_enc.dtype) / 3)
        sae.W_dec.copy_(torch.randn(sae.W_dec.shape, generator=g, dtype=sae.W_dec.dtype) / 3)
        sae.b_dec.copy_(torch.randn(D_IN, generator=g, dtype=sae.b_dec.dtype) / 4)
        # sparse codes: most latents start well below 0 (a ReLU/JumpReLU code ~3% dense)
        sae.b_enc.copy_(-2.6 + torch.randn(D_SAE, generator=g, dtype=sae.b_enc.dtype) / 4)
    return sae


def _step_input(sae, x, dead=None, step=0):
    coeffs = {name: c.value for name, c in sae.get_coefficients().items()} if hasattr(
        next(iter(sae.get_coefficients().values()), None), "value") else dict(sae.get_coefficients())
    return TrainStepInput(sae_in=x, coefficients=coeffs, dead_neuron_mask=dead,
                          n_training_steps=step, is_logging_step=False)


def _x(dtype=torch.float64, seed=1):
    return torch.randn(N, D_IN, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _compare(plain, fast, x, dead, atol):
    ref = plain.training_forward_pass(_step_input(plain, x, dead))
    out = fast.training_forward_pass(_step_input(fast, x, dead))
    ref.loss.backward()
    out.loss.backward()
    for field in ("sae_out", "feature_acts", "hidden_pre", "loss"):
        torch.testing.assert_close(getattr(out, field), getattr(ref, field), atol=atol, rtol=atol,
                                   msg=field)
    assert set(out.losses) == set(ref.losses)
    for name in ref.losses:
        torch.testing.assert_close(out.losses[name], ref.losses[name], atol=atol, rtol=atol, msg=name)
    for name, p in plain.named_parameters():
        q = dict(fast.named_parameters())[name]
        assert (p.grad is None) == (q.grad is None), name
        if p.grad is not None:  # (JumpReLU's threshold stays float32: float32 rounding)
            tol = atol if p.dtype == torch.float64 else max(atol, 1e-6)
            torch.testing.assert_close(q.grad, p.grad, atol=tol, rtol=tol, msg=f"grad {name}")
    for name, b in plain.named_buffers():
        torch.testing.assert_close(dict(fast.named_buffers())[name], b, atol=atol, rtol=atol)


class _Spy:
    """Counts sparse_decode calls of the training path (the kernels really ran)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = _sparse_grad.K.sparse_decode

        def spy(*a, **k):
            self.calls += 1
            return real(*a, **k)
        monkeypatch.setattr(_sparse_grad.K, "sparse_decode", spy)


CASES = [
    ("topk", {}), ("topk", {"rescale_acts_by_decoder_norm": False}),
    ("topk", {"apply_b_dec_to_input": False}), ("batchtopk", {}),
    ("standard", {}), ("standard", {"normalize_activations": "layer_norm"}), ("standard", {"lp_norm": 2.0}),
    ("jumprelu", {}), ("jumprelu", {"jumprelu_ste_to_input": True}),
    ("jumprelu", {"jumprelu_sparsity_loss_mode": "tanh", "pre_act_loss_coefficient": 0.1}),
    ("jumprelu", {"jumprelu_sparsity_loss_mode": "quadratic", "target_l0": 3.0}),
]


@pytest.mark.parametrize("kind,cfg", CASES, ids=[f"{k}-{'-'.join(c) or 'default'}" for k, c in CASES])
@pytest.mark.parametrize("dead", [False, True])
def test_training_forward_pass_matches_sae_lens(kind, cfg, dead, monkeypatch):
    plain = _make(kind, **cfg)
    fast = accelerate(copy.deepcopy(plain))
    assert "encode_with_hidden_pre" in fast.__dict__
    spy = _Spy(monkeypatch)
    mask = None
    if dead:
        mask = torch.zeros(D_SAE, dtype=torch.bool)
        mask[::3] = True
    _compare(plain, fast, _x(), mask, atol=1e-10)
    # the encoder backward and the decoder both went through the kernels (except: the
    # pre-activation loss's gradient covers every dead latent, too dense: the GEMM ran)
    assert spy.calls >= (1 if dead and cfg.get("pre_act_loss_coefficient") else 2)


@pytest.mark.parametrize("kind", ["topk", "batchtopk", "standard", "jumprelu"])
def test_dense_codes_fall_back_with_the_same_results(kind, monkeypatch):
    plain = _make(kind)
    with torch.no_grad():
        plain.b_enc.fill_(1.0)  # nearly every latent active (TopK: k above the dense share)
    fast = accelerate(copy.deepcopy(plain))
    monkeypatch.setattr(_sparse_grad, "DENSE_FRACTION", 1 / 64 if kind in ("topk", "batchtopk") else 1 / 16)
    spy = _Spy(monkeypatch)
    _compare(plain, fast, _x(), None, atol=1e-10)
    assert spy.calls == 0


@pytest.mark.parametrize("kind", ["topk", "batchtopk", "standard", "jumprelu"])
def test_optimiser_steps_follow_sae_lens(kind):
    """SAELens's trainer step sequence (forward pass, backward, clip to 1, Adam) for a few
    steps: the same parameters (and BatchTopK threshold) as unaccelerated SAELens."""
    plain = _make(kind, dtype="float32")
    fast = accelerate(copy.deepcopy(plain))
    opts = [torch.optim.Adam(m.parameters(), lr=3e-3) for m in (plain, fast)]
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[1::4] = True
    for step in range(4):
        x = _x(torch.float32, seed=10 + step)
        for m, opt in zip((plain, fast), opts):
            m.train()
            out = m.training_forward_pass(_step_input(m, x, dead if step % 2 else None, step))
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q, p, atol=2e-5, rtol=2e-5, msg=name)
    for name, b in plain.named_buffers():
        torch.testing.assert_close(dict(fast.named_buffers())[name], b, atol=2e-5, rtol=2e-5)


def test_fallbacks_and_restore():
    plain = _make("topk")
    fast = accelerate(copy.deepcopy(plain))
    x = _x()
    # a hook on a hook point: SAELens's own methods run (the hook sees and changes the code)
    h = fast.hook_sae_acts_post.add_hook(lambda a, hook: a * 2)
    doubled = fast.training_forward_pass(_step_input(fast, x)).feature_acts
    fast.hook_sae_acts_post.remove_hooks()
    torch.testing.assert_close(doubled, 2 * plain.training_forward_pass(_step_input(plain, x)).feature_acts)
    del h
    # sparse COO activations (SAELens's own sparse path) are left to SAELens
    coo = accelerate(_make("topk", use_sparse_activations=True, dtype="float32"))
    out = coo.training_forward_pass(_step_input(coo, _x(torch.float32)))
    assert out.feature_acts.is_sparse
    # an edited code (not the encoder's latest output) decodes from its own non-zeros
    f = fast.encode(x).detach().clone()
    f[:, 0] = 5.0
    torch.testing.assert_close(fast.decode(f), plain.decode(f), atol=1e-10, rtol=1e-10)
    restore(fast)
    assert "encode_with_hidden_pre" not in fast.__dict__ and "_pyinterp_code" not in fast.__dict__


def test_subclasses_and_other_architectures():
    # Matryoshka overrides the BatchTopK training pass: accelerate() refuses, naming the kinds
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mat = L.MatryoshkaBatchTopKTrainingSAE(L.MatryoshkaBatchTopKTrainingSAEConfig(
            d_in=D_IN, d_sae=D_SAE, k=3, matryoshka_widths=[32, D_SAE]))
    with pytest.raises(ValueError, match="supports SAELens architectures"):
        accelerate(mat)

    class MyTopK(L.TopKTrainingSAE):
        def encode_with_hidden_pre(self, x):  # a user's variant: never mirrored
            f, h = super().encode_with_hidden_pre(x)
            return f * 0.5, h

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mine = MyTopK(L.TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=4))
    accelerate(mine)
    assert "encode_with_hidden_pre" not in mine.__dict__
    x = _x(torch.float32)
    torch.testing.assert_close(mine.training_forward_pass(_step_input(mine, x)).feature_acts,
                               MyTopK.encode_with_hidden_pre(mine, x)[0])


@pytest.mark.parametrize("kind", ["standard", "jumprelu"])
def test_inference_forward_decodes_sparsely_with_the_same_result(kind, monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "standard":
            plain = L.StandardSAE(L.StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, dtype="float64"))
        else:
            plain = L.JumpReLUSAE(L.JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, dtype="float64"))
    src = _make(kind)
    plain.load_state_dict({k: v for k, v in src.state_dict().items() if k in plain.state_dict()})
    fast = accelerate(copy.deepcopy(plain))
    spy = _Spy(monkeypatch)
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(fast(x), plain(x), atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(fast.encode(x), plain.encode(x))  # dense: SAELens's own
        f = plain.encode(x)
        torch.testing.assert_close(fast.decode(f), plain.decode(f), atol=1e-10, rtol=1e-10)
    assert spy.calls == 2


@pytest.mark.parametrize("kind", ["topk", "jumprelu"])
def test_sae_lens_own_trainer_fits_the_same_sae(kind):
    """SAELens's SAETrainer.fit() on an accelerated training SAE: the same parameters and
    dead-latent counters as on the plain SAE (dead latents appear: window 2 steps)."""
    from sae_lens.config import SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    plain = _make(kind, dtype="float32")
    fast = accelerate(copy.deepcopy(plain))
    batches = [_x(torch.float32, seed=100 + s) for s in range(8)]
    trained = {}
    for name, sae in (("plain", plain), ("fast", fast)):
        cfg = SAETrainerConfig(total_training_samples=8 * N, train_batch_size_samples=N, lr=3e-3,
                               lr_end=3e-3, dead_feature_window=2, feature_sampling_window=4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = SAETrainer(cfg, sae, iter(batches))
            trainer.fit()
        trained[name] = trainer
    for (pname, p), q in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q, p, atol=2e-5, rtol=2e-5, msg=pname)
    assert torch.equal(trained["plain"].n_forward_passes_since_fired,
                       trained["fast"].n_forward_passes_since_fired)
