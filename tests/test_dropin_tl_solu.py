"""pyinterp.integrations.transformer_lens.apply from a TransformerLens user's side: a
HookedTransformer with act_fn="solu_ln" runs the fused kernel with the same logits, the same
cache for every hook point, hooks that edit neurons still take effect, the same gradients, and
revert() gives the plain model back."""
import warnings

import pytest
import torch

tl = pytest.importorskip("transformer_lens", reason="needs transformer-lens (pip install 'pyinterp[peers]')")

from pyinterp import ops  # noqa: E402
from pyinterp.integrations import transformer_lens as ptl  # noqa: E402


def _model(norm="LN", cls=None, dtype=torch.float32):
    cfg = tl.HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=48,
                                     d_vocab=50, n_ctx=16, act_fn="solu_ln", normalization_type=norm,
                                     seed=0, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = (cls or tl.HookedTransformer)(cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial LN affine parameters
        for name, p in m.named_parameters():
            if name.endswith("ln.w") or name.endswith("ln.b"):
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return m


def _tokens():
    return torch.randint(0, 50, (3, 12), generator=torch.Generator().manual_seed(0))


class _Spy:
    def __init__(self, monkeypatch):
        self.calls = 0
        real = ops.solu_ln

        def spy(*a, **k):
            self.calls += 1
            return real(*a, **k)
        monkeypatch.setattr(ops, "solu_ln", spy)


@pytest.mark.parametrize("norm", ["LN", "LNPre"])
def test_same_logits_cache_and_gradients(norm, monkeypatch):
    model, ref_model = _model(norm), _model(norm)
    t = _tokens()
    ref_logits, ref_cache = ref_model.run_with_cache(t)
    assert ptl.apply(model) is model and ptl.applied(model) == 2
    spy = _Spy(monkeypatch)
    torch.testing.assert_close(model(t), ref_logits, atol=1e-5, rtol=1e-5)
    assert spy.calls == 2  # both MLPs ran the kernel
    # every hook point is still there; caching all of them (ln.hook_scale included) matches
    logits, cache = model.run_with_cache(t)
    assert set(cache.keys()) == set(ref_cache.keys())
    for k in ref_cache.keys():
        torch.testing.assert_close(cache[k], ref_cache[k], atol=1e-5, rtol=1e-5, msg=k)
    # the kernel's own outputs feed hook_pre / hook_mid / hook_post when only those are hooked
    names = [f"blocks.{i}.mlp.{h}" for i in range(2) for h in ("hook_pre", "hook_mid", "hook_post")]
    calls = spy.calls
    _, part = model.run_with_cache(t, names_filter=names)
    assert spy.calls == calls + 2
    for k in names:
        torch.testing.assert_close(part[k], ref_cache[k], atol=1e-5, rtol=1e-5, msg=k)
    # training step: the same gradients
    model.zero_grad(), ref_model.zero_grad()
    model(t, return_type="loss").backward()
    ref_model(t, return_type="loss").backward()
    for (name, p), q in zip(ref_model.named_parameters(), model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_hooks_that_edit_neurons_take_effect():
    model, ref_model = _model(), _model()
    ptl.apply(model)
    t = _tokens()

    def in_place(x, hook):
        x[..., :5] = 0  # TransformerLens-style in-place edit of hook_mid
        return x

    def new_tensor(x, hook):
        return x * 2

    for fn in (in_place, new_tensor):
        hooks = [("blocks.0.mlp.hook_mid", fn), ("blocks.1.mlp.hook_post", lambda x, hook: x + 1)]
        torch.testing.assert_close(model.run_with_hooks(t, fwd_hooks=hooks),
                                   ref_model.run_with_hooks(t, fwd_hooks=hooks), atol=1e-5, rtol=1e-5)
    # a backward hook on hook_mid sees TransformerLens's gradients (that block falls back)
    grads = {}
    for m, key in ((model, "ours"), (ref_model, "ref")):
        def record(g, hook, key=key):
            grads[key] = g[0] if isinstance(g, tuple) else g
        m.blocks[0].mlp.hook_mid.add_hook(record, dir="bwd")
        m(t, return_type="loss").backward()
        m.reset_hooks()
    torch.testing.assert_close(grads["ours"], grads["ref"], atol=1e-5, rtol=1e-4)


def test_revert_apply_idempotent_and_other_models():
    model = _model()
    ptl.apply(model)
    ptl.apply(model)
    assert "forward" in model.blocks[0].mlp.__dict__
    ptl.revert(model)
    assert "forward" not in model.blocks[0].mlp.__dict__ and ptl.applied(model) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gelu = tl.HookedTransformer(tl.HookedTransformerConfig(
            n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=20, n_ctx=8, act_fn="gelu"))
    assert ptl.applied(ptl.apply(gelu)) == 0  # nothing to fuse: unchanged


def test_float16_falls_back_and_hooked_sae_transformer():
    sae_lens = pytest.importorskip("sae_lens", reason="needs sae-lens (pip install 'pyinterp[peers]')")
    model, ref_model = _model(cls=sae_lens.HookedSAETransformer), _model(cls=sae_lens.HookedSAETransformer)
    ptl.apply(model)
    t = _tokens()
    seen = []
    model.blocks[1].mlp.hook_in.add_hook(lambda x, hook: seen.append(x.shape))
    torch.testing.assert_close(model(t), ref_model(t), atol=1e-5, rtol=1e-5)
    assert seen == [(3, 12, 32)]  # SAELens's hook_in still fires
    half = ptl.apply(_model(dtype=torch.float64).to(torch.float16))
    assert torch.isfinite(half(t).float()).all()
