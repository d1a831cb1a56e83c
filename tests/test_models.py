"""pyinterp.models.Transformer: shapes, hook points, caching, patching, loss, generation,
save/load, training with exact resume."""
import json

import pytest
import torch
import torch.nn.functional as F

import pyinterp
from pyinterp._files import CorruptFileError
from pyinterp.models import (
    TrainConfig,
    Transformer,
    TransformerConfig,
    load_model,
    save_model,
    train,
)

V, CTX = 53, 24


def tiny(**kw):
    base = dict(n_layers=2, d_model=32, n_heads=4, d_vocab=V, n_ctx=CTX, seed=1)
    base.update(kw)
    return Transformer(TransformerConfig(**base))


VARIANTS = [
    dict(act_fn="solu_ln", positional="learned"),
    dict(act_fn="gelu", positional="rotary"),
    dict(act_fn="relu", positional="learned", tied_embeddings=True),
    dict(act_fn=None, positional="rotary"),
    dict(act_fn="gelu", positional="learned", normalization=None),
]


def tokens(B=3, T=11, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda k: f"{k['act_fn']}-{k['positional']}")
def test_hook_shapes_and_cache_matches_plain_forward(kw):
    m = tiny(**kw)
    t = tokens()
    B, T = t.shape
    ref = m(t)
    assert ref.shape == (B, T, V)
    logits, cache = m.run_with_cache(t)
    # caching materialises the pattern instead of SDPA: equal up to float rounding
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)
    H, dh, d = 4, 8, 32
    assert cache["hook_embed"].shape == (B, T, d)
    for i in range(2):
        for n in ("hook_resid_pre", "hook_attn_out", "hook_resid_post"):
            assert cache[f"blocks.{i}.{n}"].shape == (B, T, d)
        for n in ("hook_q", "hook_k", "hook_v", "hook_z"):
            assert cache[f"blocks.{i}.attn.{n}"].shape == (B, T, H, dh)
        assert cache[f"blocks.{i}.attn.hook_pattern"].shape == (B, H, T, T)
        p = cache[f"blocks.{i}.attn.hook_pattern"]
        torch.testing.assert_close(p.sum(-1), torch.ones(B, H, T))
        assert torch.all(p.triu(1) == 0)
        if kw["act_fn"] is not None:
            assert cache[f"blocks.{i}.hook_resid_mid"].shape == (B, T, d)
            assert cache[f"blocks.{i}.mlp.hook_pre"].shape == (B, T, 4 * d)
            assert cache[f"blocks.{i}.mlp.hook_post"].shape == (B, T, 4 * d)
            torch.testing.assert_close(
                cache[f"blocks.{i}.hook_resid_post"],
                cache[f"blocks.{i}.hook_resid_mid"] + cache[f"blocks.{i}.hook_mlp_out"])
        else:
            assert f"blocks.{i}.hook_resid_mid" not in cache
    # residual stream identities
    torch.testing.assert_close(cache["blocks.1.hook_resid_pre"], cache["blocks.0.hook_resid_post"])
    if kw["positional"] == "learned":
        torch.testing.assert_close(cache["blocks.0.hook_resid_pre"],
                                   cache["hook_embed"] + cache["hook_pos_embed"])
    else:
        assert "hook_pos_embed" not in cache


def test_cache_without_pattern_is_exactly_the_forward():
    m = tiny()
    t = tokens()
    logits, cache = m.run_with_cache(t, names_filter=lambda n: "resid" in n)
    assert torch.equal(logits, m(t))
    assert all("resid" in k for k in cache)


def test_q_k_reproduce_pattern_after_rotary():
    m = tiny(positional="rotary", act_fn="gelu")
    t = tokens()
    _, c = m.run_with_cache(t, names_filter=["blocks.1.attn.hook_q", "blocks.1.attn.hook_k",
                                             "blocks.1.attn.hook_pattern"])
    q, k = c["blocks.1.attn.hook_q"], c["blocks.1.attn.hook_k"]
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) / 8 ** 0.5
    T = t.shape[1]
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    torch.testing.assert_close(s.softmax(-1), c["blocks.1.attn.hook_pattern"])


def test_solu_hook_mid_is_pre_ln_and_patching_it_renormalises():
    m = tiny(act_fn="solu_ln")
    t = tokens()
    _, c = m.run_with_cache(t, names_filter=lambda n: "blocks.0.mlp" in n)
    pre, mid, post = (c[f"blocks.0.mlp.{n}"] for n in ("hook_pre", "hook_mid", "hook_post"))
    torch.testing.assert_close(mid, pre * pre.softmax(-1))
    ln = m.blocks[0].mlp.ln
    torch.testing.assert_close(post, F.layer_norm(mid, (mid.shape[-1],), ln.w, ln.b, ln.eps))
    # ablate neuron 3 before the LN: hook_post must be the LN of the ablated neurons
    seen = {}

    def ablate(x, hook):
        x = x.clone()
        x[..., 3] = 0
        return x

    def grab(x, hook):
        seen["post"] = x

    m.run_with_hooks(t, fwd_hooks=[("blocks.0.mlp.hook_mid", ablate), ("blocks.0.mlp.hook_post", grab)])
    mid2 = mid.clone()
    mid2[..., 3] = 0
    torch.testing.assert_close(seen["post"], F.layer_norm(mid2, (mid.shape[-1],), ln.w, ln.b, ln.eps))


def test_hooks_replace_and_are_removed():
    m = tiny()
    t = tokens()
    clean = m(t)
    zeroed = m.run_with_hooks(t, fwd_hooks=[("blocks.1.hook_resid_post", lambda x, h: torch.zeros_like(x))])
    # zero residual -> logits are the final LN bias projected: identical for every position
    assert torch.allclose(zeroed, zeroed[:1, :1].expand_as(zeroed), atol=1e-5)
    assert torch.equal(m(t), clean)  # hooks gone after the call
    with m.hooks(fwd_hooks=[(lambda n: n.endswith("hook_attn_out"), lambda x, h: x * 0)]):
        ablated = m(t)
        assert not torch.allclose(ablated, clean)
    assert torch.equal(m(t), clean)
    assert all(not hp.active for hp in m.hook_dict.values())


def test_hook_errors_are_clear():
    m = tiny()
    with pytest.raises(ValueError, match=r"unknown hook name 'blocks.0.hook_resid_prE'.*blocks.\{i\}.hook_resid_pre"):
        m.run_with_hooks(tokens(), fwd_hooks=[("blocks.0.hook_resid_prE", lambda x, h: x)])
    with pytest.raises(ValueError, match="unknown hook name"):
        m.run_with_cache(tokens(), names_filter=["nope"])
    with pytest.raises(TypeError, match="return a tensor"):
        m.run_with_hooks(tokens(), fwd_hooks=[("hook_embed", lambda x, h: 3)])
    with pytest.raises(ValueError, match="exceeds the model's context n_ctx=24"):
        m(torch.zeros(1, CTX + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="d_vocab"):
        m(torch.full((1, 4), V))
    with pytest.raises(TypeError, match="integer"):
        m(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="act_fn"):
        TransformerConfig(act_fn="swish")


def test_hook_names_order_and_listing():
    m = tiny()
    names = m.hook_names()
    assert names[0] == "hook_embed"
    i = names.index
    assert i("blocks.0.hook_resid_pre") < i("blocks.0.attn.hook_q") < i("blocks.0.hook_resid_mid") \
        < i("blocks.0.mlp.hook_post") < i("blocks.0.hook_resid_post") < i("blocks.1.hook_resid_pre")


def test_loss_matches_cross_entropy_and_per_token():
    m = tiny()
    t = tokens()
    logits = m(t)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, V), t[:, 1:].reshape(-1))
    torch.testing.assert_close(m.loss(t), ref)
    per = m.loss(t, per_token=True)
    assert per.shape == (3, 10)
    torch.testing.assert_close(per.mean(), ref)
    lg, loss = m(t, return_type="both")
    assert torch.equal(lg, logits) and torch.equal(loss, m.loss(t))
    assert m(t, return_type=None) is None


def test_stop_at_layer_returns_resid_pre():
    m = tiny()
    t = tokens()
    _, c = m.run_with_cache(t, names_filter="blocks.1.hook_resid_pre")
    torch.testing.assert_close(m(t, stop_at_layer=1), c["blocks.1.hook_resid_pre"])


@pytest.mark.parametrize("positional", ["learned", "rotary"])
def test_left_padding_and_kv_cache_give_the_unpadded_result(positional):
    m = tiny(positional=positional, act_fn="gelu")
    a, b = [5, 6, 7], [1, 2, 3, 4, 9, 10]
    both = m.generate([a, b], max_new_tokens=6, temperature=0)
    assert both[0] == m.generate([a], max_new_tokens=6, temperature=0)[0]
    assert both[1] == m.generate([b], max_new_tokens=6, temperature=0)[0]
    t = tokens(2, 5)
    assert torch.equal(m.generate(t, max_new_tokens=5, temperature=0),
                       m.generate(t, max_new_tokens=5, temperature=0, use_kv_cache=False))
    # padded logits equal unpadded logits at the real positions
    toks = torch.tensor([[0, 0, 0] + a])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1]])
    torch.testing.assert_close(m(toks, attention_mask=mask)[:, 3:], m(torch.tensor([a])), atol=1e-5, rtol=1e-5)


def test_generation_sampling_seed_top_p_stop_and_steering():
    m = tiny()
    t = tokens(2, 4)
    s1 = m.generate(t, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=3)
    s2 = m.generate(t, max_new_tokens=8, temperature=1.0, top_p=0.9, seed=3)
    assert torch.equal(s1, s2) and s1.shape == (2, 12)
    # top_p tiny -> greedy
    assert torch.equal(m.generate(t, max_new_tokens=4, top_p=1e-6, seed=1),
                       m.generate(t, max_new_tokens=4, temperature=0))
    greedy = m.generate([[1, 2]], max_new_tokens=6, temperature=0)[0]
    stop = greedy[2]
    out = m.generate([[1, 2]], max_new_tokens=6, temperature=0, stop_tokens=[stop])[0]
    assert out == [1, 2, stop]
    # steering: a large vector added at every position changes the continuation, and the
    # hook sees the prompt and then one token at a time (KV cache)
    direction = torch.randn(32) * 50
    shapes = []

    def steer(x, hook):
        shapes.append(x.shape[1])
        return x + direction

    with m.hooks(fwd_hooks=[("blocks.0.hook_resid_post", steer)]):
        steered = m.generate([[1, 2]], max_new_tokens=6, temperature=0)[0]
    assert steered != greedy
    assert shapes == [2, 1, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="n_ctx"):
        m.generate(t, max_new_tokens=CTX)


def test_generate_strings_with_tokenizer():
    from pyinterp.data import ByteTokenizer

    m = Transformer(TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=257, n_ctx=32))
    m.tokenizer = ByteTokenizer()
    out = m.generate(["ab", "hello"], max_new_tokens=3, temperature=0, include_prompt=False)
    assert isinstance(out, list) and all(isinstance(s, str) for s in out)
    assert isinstance(m.generate("hi", max_new_tokens=2), str)


def test_backward_through_solu_uses_pyinterp_ops_and_matches_reference():
    m = tiny(act_fn="solu_ln")
    t = tokens()
    with pyinterp.backend("reference"):
        l_ref = m.loss(t)
        g_ref = torch.autograd.grad(l_ref, list(m.parameters()))
    l = m.loss(t)  # auto backend (the C++ kernel where it is built)
    g = torch.autograd.grad(l, list(m.parameters()))
    torch.testing.assert_close(l, l_ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_config_json_and_save_load_identical(tmp_path):
    cfg = TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=40, n_ctx=8, positional="rotary")
    assert TransformerConfig.from_json(cfg.to_json()) == cfg
    m = Transformer(cfg)
    save_model(m, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["config"]["positional"] == "rotary"
    m2 = load_model(tmp_path / "m")
    assert m2.cfg == cfg
    for (k, v), (k2, v2) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    t = torch.randint(0, 40, (2, 8))
    assert torch.equal(m(t), m2(t))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(CorruptFileError, match="no weights file"):
        load_model(tmp_path / "m")


def test_init_is_deterministic_in_seed():
    a, b, c = tiny(seed=4), tiny(seed=4), tiny(seed=5)
    assert torch.equal(a.embed.W_E, b.embed.W_E)
    assert not torch.equal(a.embed.W_E, c.embed.W_E)


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_training_reduces_loss_and_resume_is_bit_exact(tmp_path, one_thread):
    data = torch.randint(0, V, (48, 12), generator=torch.Generator().manual_seed(0))
    data[:, 6:] = data[:, :6]  # learnable: second half copies the first
    tc = TrainConfig(max_steps=8, batch_size=8, lr=3e-3, warmup_steps=2, progress=False,
                     log_every=1, checkpoint_every=3, eval_every=4)
    full = train(tiny(), data, tc, tmp_path / "full", eval_data=data[:16])
    assert full.step == 8 and len(full.history["eval"]) == 2
    part = train(tiny(), data, tc, tmp_path / "part", stop_after=5)
    assert part.step == 5
    # resume into a differently initialised model: everything comes from the checkpoint
    resumed = train(tiny(seed=99), data, tc, tmp_path / "part", eval_data=data[:16])
    assert resumed.step == 8
    for (k, v), (_, v2) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(v, v2), k
    assert full.history["loss"] == resumed.history["loss"]
    assert (tmp_path / "part" / "latest").read_text() == "step-0000008"
    assert (tmp_path / "part" / "metrics.json").is_file()
    m = load_model(tmp_path / "full" / "step-0000008")
    assert torch.equal(m.embed.W_E, full.model.embed.W_E)
    # a second identical run is identical (determinism under the seed)
    again = train(tiny(), data, tc, None)
    assert torch.equal(again.model.embed.W_E, full.model.embed.W_E)


def test_training_learns(one_thread):
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, V, (64, 12), generator=g)
    data[:, 6:] = data[:, :6]
    m = tiny(act_fn="gelu")
    before = float(m.loss(data).detach())
    res = train(m, data, TrainConfig(max_steps=60, batch_size=16, lr=1e-2, warmup_steps=5, progress=False))
    assert res.final_loss < before - 0.5


def test_train_accepts_iterables_and_callables():
    m = tiny(n_layers=1)
    batches = [torch.randint(0, V, (4, 8)) for _ in range(3)]
    r = train(m, batches, TrainConfig(max_steps=5, batch_size=4, progress=False, warmup_steps=0))
    assert r.step == 5
    r = train(tiny(n_layers=1), lambda step: batches[step % 3],
              TrainConfig(max_steps=2, batch_size=4, progress=False))
    assert r.step == 2
    with pytest.raises(ValueError, match="fewer than batch_size"):
        train(tiny(), torch.zeros(2, 8, dtype=torch.long), TrainConfig(max_steps=1, batch_size=4, progress=False))
