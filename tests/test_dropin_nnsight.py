"""pyinterp inside an nnsight trace of a Hugging Face model (extra ``nnsight``): pyinterp ops and
SAEs (pyinterp's own and accelerated SAELens ones) run on the traced activations, read and
write them, and give what the same computation gives through plain PyTorch hooks."""
import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
nnsight = pytest.importorskip("nnsight", reason="needs nnsight (pip install 'pyinterp[nnsight]')")
transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'pyinterp[hf]')")

from hf_testing import tiny_tokenizer  # noqa: E402
from pyinterp import ops  # noqa: E402
from pyinterp.sae import TopKSAE  # noqa: E402


def _hf():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=64, n_positions=32,
                                  bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _tokens():
    return torch.randint(1, 64, (2, 9), generator=torch.Generator().manual_seed(0))


def _reference(hf, t, sae, capture=None):
    """Logits with block 0's output replaced by the SAE reconstruction, via a PyTorch hook;
    ``capture``: (module, dict) to record that module's output in the same run."""
    handles = [hf.transformer.h[0].register_forward_hook(lambda mod, a, out: sae(out))]
    if capture is not None:
        module, store = capture
        handles.append(module.register_forward_hook(lambda mod, a, out: store.__setitem__("out", out)))
    try:
        with torch.no_grad():
            return hf(t).logits
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("wrapper", ["NNsight", "TransformersModel"])
def test_pyinterp_sae_and_ops_inside_a_trace(wrapper):
    hf = _hf()
    sae = TopKSAE(32, 96, k=4, seed=0)
    t = _tokens()
    if wrapper == "NNsight":
        model = nnsight.NNsight(hf)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = nnsight.TransformersModel(hf, tokenizer=tiny_tokenizer())
    with torch.no_grad():
        hidden = hf(t, output_hidden_states=True).hidden_states[1]  # block 0's output
    with model.trace(t):
        h = model.transformer.h[0].output
        v, i = sae.encode(h)  # pyinterp's sparse kernels on the traced activation
        v, i = v.save(), i.save()
        model.transformer.h[0].output = sae(h)  # splice the reconstruction in
        neurons = ops.solu_ln(model.transformer.h[1].mlp.c_fc.output).save()
        logits = model.lm_head.output.save()
    rv, ri = sae.encode(hidden)
    torch.testing.assert_close(v, rv)
    assert torch.equal(i, ri)
    store = {}
    ref = _reference(hf, t, sae, capture=(hf.transformer.h[1].mlp.c_fc, store))
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
    x = store["out"]  # block 1's MLP input neurons, on the spliced stream
    torch.testing.assert_close(neurons, torch.nn.functional.layer_norm(x * x.softmax(-1), (x.shape[-1],)),
                               atol=1e-5, rtol=1e-5)


def test_accelerated_sae_lens_sae_inside_a_trace():
    sae_lens = pytest.importorskip("sae_lens", reason="needs sae-lens (pip install 'pyinterp[peers]')")
    from pyinterp.sae import accelerate

    hf = _hf()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sl = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=32, d_sae=96, k=4))
    with torch.no_grad():
        sl.W_enc.normal_(0, 0.3)
        sl.W_dec.normal_(0, 0.3)
    accelerate(sl)
    model = nnsight.NNsight(hf)
    t = _tokens()
    with model.trace(t):
        h = model.transformer.h[1].output
        v, i = sl.encode_sparse(h)
        v, i = v.save(), i.save()
        model.transformer.h[1].output = sl(h)
        logits = model.lm_head.output.save()
    store = {}
    handle = hf.transformer.h[1].register_forward_hook(lambda mod, a, out: store.__setitem__("out", out))
    try:
        with torch.no_grad():
            hf(t)
            dense = sl.encode(store["out"])
    finally:
        handle.remove()
    torch.testing.assert_close(torch.zeros_like(dense).scatter_add(-1, i, v), dense, atol=1e-5, rtol=1e-5)
    handle = hf.transformer.h[1].register_forward_hook(lambda mod, a, out: sl(out))
    try:
        with torch.no_grad():
            ref = hf(t).logits
    finally:
        handle.remove()
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
