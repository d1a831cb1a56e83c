"""from_hf / from_transformer_lens: the same hook names and shapes on tiny randomly initialised
Hugging Face (GPT-2, Llama, Mistral, Qwen2, Qwen3) and TransformerLens models built offline."""
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip(
    "transformers", reason="the from_hf adapter tests need transformers (pip install 'pyinterp[hf]')")

from hf_testing import FAMILIES, V, build, toks  # noqa: E402
from pyinterp.models import from_hf  # noqa: E402
from pyinterp.models.hf import SUPPORTED_FAMILIES  # noqa: E402


@pytest.mark.parametrize("family", FAMILIES)
def test_resid_post_equals_hf_hidden_states(family):
    hf = build(family)
    m = from_hf(hf)
    t = toks()
    with torch.no_grad():
        ref = hf(t, output_hidden_states=True)
        logits, cache = m.run_with_cache(
            t, names_filter=lambda n: "resid" in n or n in ("ln_final.hook_normalized", "hook_embed"))
    assert torch.equal(logits, ref.logits)  # the hooks on the residual stream change nothing
    hs = ref.hidden_states  # embeddings, block 0, ..., last entry is after the final norm
    assert torch.equal(cache["blocks.0.hook_resid_pre"], hs[0])
    for i in range(m.cfg.n_layers - 1):
        assert torch.equal(cache[f"blocks.{i}.hook_resid_post"], hs[i + 1])
        assert torch.equal(cache[f"blocks.{i + 1}.hook_resid_pre"], hs[i + 1])
    assert torch.equal(cache["ln_final.hook_normalized"], hs[-1])
    last = m.cfg.n_layers - 1
    normed = m._norm(cache[f"blocks.{last}.hook_resid_post"])
    assert torch.equal(normed, hs[-1])


@pytest.mark.parametrize("family", FAMILIES)
def test_hook_shapes_and_attention_identities(family):
    hf = build(family)
    m = from_hf(hf)
    assert m.hook_names()[0] == "hook_embed"
    t = toks()
    B, T = t.shape
    H, dh, d = 4, 8, 32
    Hkv = 4 if family == "gpt2" else 2
    with torch.no_grad():
        ref = hf(t).logits
        logits, c = m.run_with_cache(t)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)  # explicit pattern vs SDPA
    for i in range(2):
        assert c[f"blocks.{i}.attn.hook_q"].shape == (B, T, H, dh)
        assert c[f"blocks.{i}.attn.hook_k"].shape == (B, T, Hkv, dh)
        assert c[f"blocks.{i}.attn.hook_v"].shape == (B, T, Hkv, dh)
        assert c[f"blocks.{i}.attn.hook_z"].shape == (B, T, H, dh)
        assert c[f"blocks.{i}.attn.hook_pattern"].shape == (B, H, T, T)
        for n in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out"):
            assert c[f"blocks.{i}.{n}"].shape == (B, T, d)
        assert c[f"blocks.{i}.mlp.hook_post"].shape[:2] == (B, T)
        torch.testing.assert_close(c[f"blocks.{i}.hook_resid_mid"],
                                   c[f"blocks.{i}.hook_resid_pre"] + c[f"blocks.{i}.hook_attn_out"])
        torch.testing.assert_close(c[f"blocks.{i}.hook_resid_post"],
                                   c[f"blocks.{i}.hook_resid_mid"] + c[f"blocks.{i}.hook_mlp_out"])
        # q, k (after rotary) reproduce the pattern
        q, k = c[f"blocks.{i}.attn.hook_q"], c[f"blocks.{i}.attn.hook_k"]
        k = k.repeat_interleave(H // Hkv, dim=2)
        s = torch.einsum("bqhd,bkhd->bhqk", q, k) * dh ** -0.5
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        torch.testing.assert_close(s.softmax(-1), c[f"blocks.{i}.attn.hook_pattern"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_q_hook_without_pattern_keeps_sdpa_and_patching_works(family):
    hf = build(family)
    m = from_hf(hf)
    t = toks()
    with torch.no_grad():
        ref = hf(t).logits
        same = m.run_with_hooks(t, fwd_hooks=[("blocks.0.attn.hook_q", lambda x, h: x + 0)])
        torch.testing.assert_close(same, ref)
        changed = m.run_with_hooks(t, fwd_hooks=[("blocks.0.attn.hook_q", lambda x, h: x * 0)])
        assert not torch.allclose(changed, ref)
        # patching resid_mid and resid_pre take effect
        mid = m.run_with_hooks(t, fwd_hooks=[("blocks.1.hook_resid_mid", lambda x, h: x * 0)])
        assert not torch.allclose(mid, ref)
        _, c = m.run_with_cache(t, names_filter="blocks.1.hook_resid_pre")
        zeroed = m.run_with_hooks(t, fwd_hooks=[("blocks.1.hook_resid_pre", lambda x, h: torch.zeros_like(x))])
        assert not torch.allclose(zeroed, ref)
        assert torch.equal(m(t), ref)  # all hooks removed again
    # no PyTorch hooks remain on the HF modules once pyinterp's hooks are gone
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in hf.modules())


def test_eager_attention_also_hooked():
    hf = build("llama", attn="eager")
    m = from_hf(hf)
    t = toks()
    with torch.no_grad():
        logits, c = m.run_with_cache(t, names_filter=["blocks.0.attn.hook_q", "blocks.0.attn.hook_z"])
        assert torch.equal(logits, hf(t).logits)
    assert c["blocks.0.attn.hook_q"].shape == (2, 9, 4, 8)


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_generation_loss_stop_at_layer(family):
    hf = build(family)
    m = from_hf(hf)
    t = toks()
    with torch.no_grad():
        ref = hf(t, output_hidden_states=True)
        torch.testing.assert_close(m(t, stop_at_layer=1), ref.hidden_states[1])
        per = m.loss(t, per_token=True)
    assert per.shape == (2, 8)
    a, b = [3, 4, 5], [6, 7, 8, 9, 10]
    both = m.generate([a, b], max_new_tokens=5, temperature=0)
    assert both[0] == m.generate([a], max_new_tokens=5, temperature=0)[0]
    assert both[1] == m.generate([b], max_new_tokens=5, temperature=0)[0]
    assert both == m.generate([a, b], max_new_tokens=5, temperature=0, use_kv_cache=False)
    s1 = m.generate(t, max_new_tokens=4, temperature=0.8, top_p=0.9, seed=1)
    assert torch.equal(s1, m.generate(t, max_new_tokens=4, temperature=0.8, top_p=0.9, seed=1))
    # steering during generation
    vec = torch.randn(32) * 100
    with m.hooks(fwd_hooks=[("blocks.0.hook_resid_post", lambda x, h: x + vec)]):
        steered = m.generate([a], max_new_tokens=5, temperature=0)[0]
    assert steered != both[0]
    assert m.training is False and hf.training is False


def test_from_directory_and_errors(tmp_path):
    hf = build("llama")
    hf.save_pretrained(tmp_path / "llama")
    m = from_hf(tmp_path / "llama")
    t = toks()
    with torch.no_grad():
        assert torch.equal(m(t), hf(t).logits)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        from_hf(tmp_path / "missing")
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text((tmp_path / "llama" / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no weights"):
        from_hf(tmp_path / "noweights")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="unsupported architecture 'bert'.*gpt2.*llama.*qwen2"):
        from_hf(tmp_path / "bert")
    with pytest.raises(ValueError, match="language-model head"):
        from_hf(transformers.GPT2Model(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=V)))
    with pytest.raises(ValueError, match="unknown hook name"):
        m.run_with_hooks(t, fwd_hooks=[("blocks.0.mlp.hook_mid", lambda x, h: x)])
    assert set(FAMILIES) <= set(SUPPORTED_FAMILIES)


def test_unadapted_models_unaffected():
    """Wrapping transformers' attention functions must not change other models."""
    hf_a, hf_b = build("qwen2", seed=1), build("qwen2", seed=1)
    t = toks()
    with torch.no_grad():
        before = hf_b(t).logits
        m = from_hf(hf_a)
        with m.hooks(fwd_hooks=[("blocks.0.attn.hook_q", lambda x, h: x * 0)]):
            after = hf_b(t).logits
    assert torch.equal(before, after)


# -- TransformerLens -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tl():
    return pytest.importorskip(
        "transformer_lens", reason="the TransformerLens adapter tests need transformer-lens "
                                   "(pip install 'pyinterp[peers]')")


@pytest.mark.parametrize("pos", ["rotary", "standard"])
def test_transformer_lens_adapter(tl, pos):
    from pyinterp.models import from_transformer_lens

    cfg = tl.HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=50,
                                     n_ctx=16, act_fn="gelu", positional_embedding_type=pos,
                                     normalization_type="LN", seed=0)
    tlm = tl.HookedTransformer(cfg)
    m = from_transformer_lens(tlm)
    t = torch.randint(0, 50, (2, 8))
    ref_logits, ref = tlm.run_with_cache(t)
    logits, c = m.run_with_cache(t, names_filter=["blocks.1.attn.hook_q", "blocks.1.attn.hook_k",
                                                  "blocks.1.hook_resid_post"])
    assert torch.equal(logits, ref_logits)
    qn = "blocks.1.attn.hook_rot_q" if pos == "rotary" else "blocks.1.attn.hook_q"
    assert torch.equal(c["blocks.1.attn.hook_q"], ref[qn])
    assert torch.equal(c["blocks.1.hook_resid_post"], ref["blocks.1.hook_resid_post"])
    if pos == "rotary":
        assert "blocks.0.attn.hook_rot_q" not in m.hook_names()
    out = m.run_with_hooks(t, fwd_hooks=[("blocks.0.hook_resid_post", lambda x, h: x * 0)])
    assert not torch.allclose(out, ref_logits)
    assert torch.equal(m(t), ref_logits)
    a, b = [1, 2, 3], [4, 5, 6, 7, 8]
    both = m.generate([a, b], max_new_tokens=3, temperature=0)
    assert both[0] == m.generate([a], max_new_tokens=3, temperature=0)[0]
    assert m.loss(t, per_token=True).shape == (2, 7)
    with pytest.raises(TypeError, match="HookedTransformer"):
        from_transformer_lens(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_deepcopy_gets_its_own_hooks(family):
    import copy

    m = from_hf(build(family))
    t = toks()
    seen = {"orig": 0, "copy": 0}

    def count(key):
        def fn(x, hook):
            seen[key] += 1
            return x
        return fn

    with torch.no_grad():
        ref = m(t)
        # deep-copied while a hook is attached: the copy gets no hook, the original keeps its own
        with m.hooks([("blocks.0.hook_resid_post", count("orig"))]):
            c = copy.deepcopy(m)
            assert torch.equal(c(t), ref) and seen == {"orig": 0, "copy": 0}
            m(t)
            assert seen == {"orig": 1, "copy": 0}
        # hooks on the copy act on the copy only, and the copy's weights are its own
        with c.hooks([("blocks.0.hook_resid_post", count("copy"))]):
            c(t)
            m(t)
        assert seen == {"orig": 1, "copy": 1}
        _, cache = c.run_with_cache(t, names_filter=lambda n: n == "blocks.1.hook_resid_post")
        assert cache["blocks.1.hook_resid_post"].shape == (2, 9, 32)
        next(c.model.parameters()).add_(1.0)
        assert torch.equal(m(t), ref) and not torch.equal(c(t), ref)


@pytest.mark.parametrize("family", FAMILIES)
def test_ov_weights_match_the_hooked_values(family):
    """blocks[i].attn.W_V / W_O are laid out as TransformerLens's: v = ln1(x) @ W_V[h] (+ bias),
    attn_out = sum_h z_h @ W_O[h] (+ bias); so copying_scores works on Hugging Face models."""
    from pyinterp import attention

    m = from_hf(build(family))
    t = toks()
    names = ("blocks.1.ln1.hook_normalized", "blocks.1.attn.hook_v", "blocks.1.attn.hook_z",
             "blocks.1.hook_attn_out")
    with torch.no_grad():
        _, cache = m.run_with_cache(t, names_filter=lambda n: n in names)
        attn = m.blocks[1].attn
        W_V, W_O = attn.W_V, attn.W_O
        assert W_V.shape == (m.cfg.n_key_value_heads, m.cfg.d_model, m.cfg.d_head)
        assert W_O.shape == (m.cfg.n_heads, m.cfg.d_head, m.cfg.d_model)
        x = cache["blocks.1.ln1.hook_normalized"]
        v = torch.einsum("btd,hde->bthe", x, W_V)
        z = cache["blocks.1.attn.hook_z"]
        out = torch.einsum("bthe,hed->btd", z, W_O)
        hf_attn = m.model.transformer.h[1].attn if family == "gpt2" else m.model.model.layers[1].self_attn
        if family == "gpt2":  # Conv1D biases
            d = m.cfg.d_model
            v = v + hf_attn.c_attn.bias[2 * d:].view(m.cfg.n_heads, m.cfg.d_head)
            out = out + hf_attn.c_proj.bias
        torch.testing.assert_close(v, cache["blocks.1.attn.hook_v"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out, cache["blocks.1.hook_attn_out"], rtol=1e-5, atol=1e-5)
    scores = attention.copying_scores(m)
    assert scores.shape == (m.cfg.n_layers, m.cfg.n_heads) and bool(torch.isfinite(scores).all())
    assert float(scores.abs().max()) <= 1.0 + 1e-6
