"""SAE objects cross over both ways: pyinterp's TransformerLens/HF helpers take SAELens SAEs,
and pyinterp dictionaries run inside SAELens's HookedSAETransformer (add_sae, run_with_saes,
run_with_cache_with_saes), each checked against the peer library's own result."""
import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sae_lens = pytest.importorskip("sae_lens", reason="needs sae-lens (pip install 'pyinterp[peers]')")

from pyinterp.integrations import sae_lens as psl  # noqa: E402
from pyinterp.integrations import transformer_lens as ptl  # noqa: E402
from pyinterp.sae import BatchTopKSAE, JumpReLUSAE, ReLUSAE, TopKSAE  # noqa: E402

HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module")
def model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = {"n_layers": 3, "d_model": 32, "n_heads": 4, "d_head": 8, "d_mlp": 64, "d_vocab": 50,
               "n_ctx": 16, "act_fn": "gelu", "normalization_type": "LN", "seed": 0}
        return sae_lens.HookedSAETransformer(cfg)


def _tokens():
    return torch.randint(0, 50, (2, 10), generator=torch.Generator().manual_seed(0))


def _sl_sae(kind):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        meta = sae_lens.saes.sae.SAEMetadata(hook_name=HOOK)
        if kind == "topk":
            s = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=32, d_sae=96, k=5, metadata=meta))
        elif kind == "jumprelu":
            s = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=32, d_sae=96, metadata=meta))
            with torch.no_grad():
                s.threshold.fill_(0.2)
        else:
            s = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=32, d_sae=96, metadata=meta))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in s.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return s


@pytest.mark.parametrize("kind", ["topk", "standard", "jumprelu"])
def test_transformer_lens_helpers_take_sae_lens_saes(model, kind):
    sae = _sl_sae(kind)
    t = _tokens()
    _, cache = model.run_with_cache(t, names_filter=[HOOK])
    dense = sae.encode(cache[HOOK])
    v, i = ptl.sae_codes(model, t, sae)  # hook name from cfg.metadata.hook_name
    assert v.shape[:2] == (2, 10)
    torch.testing.assert_close(torch.zeros_like(dense).scatter_add(-1, i, v), dense,
                               atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        ref = model.run_with_saes(t, saes=[sae])  # SAELens's own splice
        with ptl.spliced(model, sae):
            ours = model(t)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


def test_sae_codes_stop_after_the_hooked_block(model):
    runs = []
    h = model.blocks[2].hook_resid_pre.add_hook(lambda x, hook: runs.append(1), is_permanent=True)
    try:
        ptl.sae_codes(model, _tokens(), _sl_sae("topk"))
    finally:
        model.blocks[2].hook_resid_pre.remove_hooks(including_permanent=True)
    del h
    assert runs == []


def test_hf_helpers_take_sae_lens_saes():
    transformers = pytest.importorskip("transformers",
                                       reason="needs transformers (pip install 'pyinterp[hf]')")
    from pyinterp.integrations import hf as phf

    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=3, n_embd=32, n_head=4,
                                                              vocab_size=50, n_positions=16)).eval()
    sae = _sl_sae("topk")
    t = _tokens()
    with torch.no_grad():
        hidden = hf(t, output_hidden_states=True).hidden_states[1]  # = blocks.1.hook_resid_pre
        dense = sae.encode(hidden)
    v, i = phf.sae_codes(hf, t, sae)
    torch.testing.assert_close(torch.zeros_like(dense).scatter_add(-1, i, v), dense, atol=1e-5, rtol=1e-5)


def _ours(kind):
    g = torch.Generator().manual_seed(2)
    common = dict(d_in=32, d_sae=96, hook_name=HOOK, seed=3)
    sae = {"topk": lambda: TopKSAE(k=5, **common), "relu": lambda: ReLUSAE(**common),
           "jumprelu": lambda: JumpReLUSAE(**common),
           "batchtopk": lambda: BatchTopKSAE(k=5, **common)}[kind]()
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(32, generator=g) * 0.1)
        sae.b_enc.copy_(torch.randn(96, generator=g) * 0.1)
        if kind == "jumprelu":
            sae.threshold.fill_(0.05)
        if kind == "batchtopk":
            sae.threshold.fill_(0.05)
    sae.set_input_scale(1.7)
    return sae.eval()


@pytest.mark.parametrize("kind", ["topk", "relu", "jumprelu", "batchtopk"])
def test_pyinterp_saes_in_hooked_sae_transformer(model, kind):
    sae = _ours(kind)
    t = _tokens()
    adapter = psl.as_sae_lens(sae)
    assert adapter.cfg.metadata.hook_name == HOOK and adapter.W_enc is sae.W_enc  # shared
    with torch.no_grad():
        with ptl.spliced(model, sae):
            ref = model(t)  # pyinterp's own splice
        out = model.run_with_saes(t, saes=[adapter])
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        model.add_sae(adapter)
        try:
            logits, cache = model.run_with_cache(t)
            torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
            acts = cache[HOOK + ".hook_sae_acts_post"]
            v, i = sae.encode(cache[HOOK + ".hook_sae_input"])
            dense = torch.zeros_like(acts).scatter_add(-1, i, v)
            torch.testing.assert_close(acts, dense, atol=1e-5, rtol=1e-5)
            assert (HOOK + ".hook_sae_acts_pre") in cache  # computed densely while cached
        finally:
            model.reset_saes()
        # the error term gives the model's own logits back
        clean = model(t)
        with_err = model.run_with_saes(t, saes=[adapter], use_error_term=True)
        torch.testing.assert_close(with_err, clean, atol=1e-5, rtol=1e-5)
    # interventions through SAELens's hook points reach pyinterp's code
    def zero_feature(acts, hook):
        acts[..., 0] = 0
        return acts
    with torch.no_grad():
        edited = model.run_with_hooks_with_saes(t, saes=[adapter],
                                                fwd_hooks=[(HOOK + ".hook_sae_acts_post", zero_feature)])
    assert edited.shape == ref.shape


def test_passing_a_pyinterp_sae_directly_names_the_adapter(model):
    with pytest.raises(AttributeError, match="as_sae_lens"):
        model.add_sae(_ours("topk"))
    with pytest.raises(TypeError, match="pyinterp.sae dictionary"):
        psl.as_sae_lens(_sl_sae("topk"))


def test_adapter_gradients_reach_the_pyinterp_parameters():
    sae = _ours("topk")
    adapter = psl.as_sae_lens(sae)
    x = torch.randn(6, 32)
    adapter(x).pow(2).sum().backward()
    ref = _ours("topk")
    ref(x).pow(2).sum().backward()
    torch.testing.assert_close(sae.W_dec.grad, ref.W_dec.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.W_enc.grad, ref.W_enc.grad, atol=1e-5, rtol=1e-5)
