"""pyinterp's SAE tooling from SAELens/TransformerLens/HF users' side: activation collection
stops at the last hook it needs (as SAELens's store does), and fine-tuning a loaded SAE keeps
its b_dec and scale."""
import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pyinterp.sae import SAETrainer, TopKSAE, TrainConfig, collect, load, stream  # noqa: E402


def _models():
    """4-layer models of each kind, with a way to count runs of their last block."""
    from pyinterp.models import Transformer, TransformerConfig

    out = {}
    m = Transformer(TransformerConfig(n_layers=4, d_model=32, n_heads=4, d_vocab=64, n_ctx=16,
                                      act_fn="gelu"))
    out["pyinterp"] = (m, lambda fn: m.add_hook("blocks.3.hook_resid_pre", fn))
    try:
        import transformer_lens as tl
    except ImportError:
        tl = None
    if tl is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = tl.HookedTransformer(tl.HookedTransformerConfig(
                n_layers=4, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=64, n_ctx=16,
                act_fn="gelu", normalization_type="LN", seed=0))
        out["transformer_lens"] = (t, lambda fn: t.blocks[3].hook_resid_pre.add_hook(fn))
    try:
        import transformers as tr
    except ImportError:
        return out
    from pyinterp.models import from_hf

    torch.manual_seed(0)
    hf = tr.GPT2LMHeadModel(tr.GPT2Config(n_layer=4, n_embd=32, n_head=4, vocab_size=64,
                                          n_positions=16)).eval()
    out["hf"] = (from_hf(hf), lambda fn: hf.transformer.h[3].register_forward_hook(
        lambda mod, a, o: fn(None, None)))
    return out


MODELS = _models()


@pytest.mark.parametrize("kind", list(MODELS))
def test_collection_stops_after_the_last_hook_it_needs(kind, tmp_path):
    model, count_last_block = MODELS[kind]
    runs = []
    count_last_block(lambda x, hook: runs.append(1))
    batches = [torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(i)) for i in range(3)]
    names = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_pre"]
    got = list(stream(model, batches, names))
    assert runs == []  # blocks 2 and 3 never ran
    for b, acts in zip(batches, got):
        _, cache = model.run_with_cache(b, names_filter=names)
        for n in names:
            torch.testing.assert_close(acts[n], cache[n].reshape(-1, 32))
    runs.clear()
    collect(tmp_path / "acts", model, batches, hook_names=names[:1], progress=False)
    assert runs == []
    list(stream(model, batches[:1], ["ln_final.hook_normalized"]))  # needs the whole forward
    assert runs


def test_fine_tuning_a_loaded_sae_keeps_its_b_dec_and_scale(tmp_path):
    sae = TopKSAE(16, 48, k=4, seed=0)
    with torch.no_grad():
        sae.b_dec.normal_()
    sae.set_input_scale(3.0)
    sae.save(tmp_path / "sae")
    x = torch.randn(64, 16) * 5 + 2
    loaded = load(tmp_path / "sae")
    b_dec, scale = loaded.b_dec.detach().clone(), float(loaded.input_scale)
    t = SAETrainer(loaded, [x] * 4, TrainConfig(steps=1, lr=1e-9, progress=False))
    t.initialise()
    torch.testing.assert_close(loaded.b_dec.detach(), b_dec)
    assert float(loaded.input_scale) == scale and t.feed.consumed == 0  # no init batch drawn
    # a second trainer on the trained dictionary keeps them too
    t.run()
    b2 = loaded.b_dec.detach().clone()
    SAETrainer(loaded, [x] * 4, TrainConfig(steps=1, progress=False)).initialise()
    torch.testing.assert_close(loaded.b_dec.detach(), b2)
    # asked for: re-initialised from data
    SAETrainer(loaded, [x] * 4, TrainConfig(steps=1, progress=False, reinitialise=True)).initialise()
    assert not torch.allclose(loaded.b_dec.detach(), b2)
    assert float(loaded.input_scale) != scale
    # a fresh dictionary is initialised as before; state dicts count as loaded weights
    fresh = TopKSAE(16, 48, k=4, seed=1)
    SAETrainer(fresh, [x] * 4, TrainConfig(steps=1, progress=False)).initialise()
    assert fresh.data_initialised and float(fresh.input_scale) != 1.0
    other = TopKSAE(16, 48, k=4, seed=2)
    other.load_state_dict(loaded.state_dict())
    assert other.data_initialised


def test_fine_tuning_an_sae_written_by_sae_lens(tmp_path):
    sae_lens = pytest.importorskip("sae_lens", reason="needs sae-lens (pip install 'pyinterp[peers]')")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=16, d_sae=48, k=4))
    with torch.no_grad():
        theirs.b_dec.normal_()
    theirs.save_model(tmp_path / "theirs")
    ours = load(tmp_path / "theirs")
    x = torch.randn(32, 16)
    SAETrainer(ours, [x] * 3, TrainConfig(steps=1, progress=False)).initialise()
    torch.testing.assert_close(ours.b_dec.detach(), theirs.b_dec.detach())
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)
