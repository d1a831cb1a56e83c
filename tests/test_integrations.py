"""pyinterp.integrations: TransformerLens, Hugging Face and SAELens glue (each optional)."""
import builtins
import importlib
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _block_import(monkeypatch, blocked: str):
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == blocked or name.startswith(blocked + "."):
            raise ImportError(f"No module named {blocked!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)


@pytest.mark.parametrize("module,blocked,extra", [
    ("transformer_lens", "transformer_lens", "pyinterp[peers]"),
    ("hf", "transformers", "pyinterp[hf]"),
    ("sae_lens", "sae_lens", "pyinterp[peers]"),
])
def test_missing_library_names_the_extra(monkeypatch, module, blocked, extra):
    mod = importlib.import_module(f"pyinterp.integrations.{module}")  # importing needs nothing
    _block_import(monkeypatch, blocked)
    with pytest.raises(ImportError, match=extra.replace("[", r"\[").replace("]", r"\]")):
        mod._require()


def test_models_adapters_name_their_extra(monkeypatch):
    from pyinterp.models import hf, tl

    _block_import(monkeypatch, "transformers")
    with pytest.raises(ImportError, match=r"pyinterp\[hf\]"):
        hf.from_hf("anything")
    _block_import(monkeypatch, "transformer_lens")
    with pytest.raises(ImportError, match=r"pyinterp\[peers\]"):
        tl.from_transformer_lens(torch.nn.Linear(1, 1))


def _topk_sae(d_in, hook_name):
    from pyinterp.sae import TopKSAE

    return TopKSAE(d_in=d_in, d_sae=64, k=4, hook_name=hook_name, seed=0)


@pytest.fixture(scope="module")
def tl_model():
    tl = pytest.importorskip("transformer_lens", reason="needs transformer-lens (pip install 'pyinterp[peers]')")
    cfg = tl.HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=50,
                                     n_ctx=24, act_fn="gelu", positional_embedding_type="rotary",
                                     normalization_type="LN", seed=0)
    return tl.HookedTransformer(cfg)


def test_transformer_lens_head_scores_and_sae(tl_model):
    from pyinterp import attention
    from pyinterp.integrations import transformer_lens as ptl

    t = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(0))
    scores = ptl.head_scores(tl_model, t)
    assert set(scores) == {"previous_token", "duplicate_token", "induction"}
    assert all(v.shape == (2, 4) for v in scores.values())
    # the same scores through pyinterp's adapter of the same model
    wrapped = ptl.wrap(tl_model)
    again = attention.head_scores(wrapped, t)
    for k in scores:
        torch.testing.assert_close(scores[k], again[k])
    assert ptl.induction_scores(tl_model, seq_len=6, batch=2).scores.shape == (2, 4)

    sae = _topk_sae(32, "blocks.0.hook_resid_post")
    values, indices = ptl.sae_codes(tl_model, t, sae)
    assert values.shape == indices.shape == (2, 16, 4)
    _, cache = tl_model.run_with_cache(t, names_filter="blocks.0.hook_resid_post")
    v_ref, i_ref = sae.encode(cache["blocks.0.hook_resid_post"])
    torch.testing.assert_close(values, v_ref)
    clean = tl_model(t, return_type="loss")
    with ptl.spliced(tl_model, sae):
        spliced = tl_model(t, return_type="loss")
    with ptl.spliced(tl_model, sae, keep_error=True):
        kept = tl_model(t, return_type="loss")
    assert not torch.allclose(clean, spliced)
    torch.testing.assert_close(kept, clean, atol=1e-5, rtol=1e-5)
    assert torch.equal(tl_model(t, return_type="loss"), clean)  # hooks removed
    with pytest.raises(ValueError, match="unknown hook name"):
        ptl.sae_codes(tl_model, t, sae, hook_name="blocks.9.hook_resid_post")


def test_hf_integration_sae_and_register():
    transformers = pytest.importorskip("transformers", reason="needs transformers (pip install 'pyinterp[hf]')")
    from pyinterp.integrations import hf as phf

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=48, vocab_size=64,
                                   max_position_embeddings=64, bos_token_id=0, eos_token_id=0)
    hf_model = transformers.LlamaForCausalLM(cfg).eval()
    model = phf.wrap(hf_model)
    assert phf.wrap(model) is model
    t = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    sae = _topk_sae(32, "blocks.0.hook_resid_post")
    values, indices = phf.sae_codes(model, t, sae)
    _, cache = model.run_with_cache(t, names_filter="blocks.0.hook_resid_post")
    v_ref, i_ref = sae.encode(cache["blocks.0.hook_resid_post"])
    torch.testing.assert_close(values, v_ref)
    with torch.no_grad():
        clean = model.loss(t)
        with phf.spliced(model, sae):
            assert not torch.allclose(model.loss(t), clean)
        seen = []
        with phf.register(model, "blocks.1.mlp.hook_post", lambda x, h: seen.append(x.shape)):
            model(t)
        assert seen == [(2, 10, 48)]
        assert torch.equal(model.loss(t), clean)
    scores = phf.head_scores(model, t)
    assert scores["induction"].shape == (2, 4)


def test_sae_lens_reexports(tmp_path):
    from pyinterp.integrations import sae_lens as psl

    sae = _topk_sae(16, "blocks.0.hook_resid_post")
    psl.save(sae, tmp_path / "sae")
    assert (tmp_path / "sae" / "cfg.json").is_file()
    back = psl.load(tmp_path / "sae")
    assert torch.equal(back.W_dec, sae.W_dec)
    pytest.importorskip("sae_lens", reason="needs sae-lens (pip install 'pyinterp[peers]')")
    sl_sae = psl.load_sae_lens(tmp_path / "sae")
    x = torch.randn(5, 16)
    ref = sl_sae(x)
    psl.accelerate(sl_sae)
    torch.testing.assert_close(sl_sae(x), ref, atol=1e-5, rtol=1e-5)
    psl.restore(sl_sae)
