"""pyinterp from a Hugging Face user's side: wrapping is idempotent and never silently loses
attention hooks, no lasting global change to transformers, ``generate`` behaves like HF's."""
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip(
    "transformers", reason="the Hugging Face drop-in tests need transformers (pip install 'pyinterp[hf]')")

from hf_testing import build, toks  # noqa: E402
from pyinterp.integrations import hf as phf  # noqa: E402
from pyinterp.models import from_hf  # noqa: E402


def _attention_registry():
    from transformers.modeling_utils import AttentionInterface

    return dict(AttentionInterface._global_mapping)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_wrapping_twice_gives_one_wrapper_and_correct_head_scores(family):
    hf = build(family)
    m = from_hf(hf)
    t = toks(T=12)
    # a helper called with the raw model (it wraps it "again") and with the wrapper agree
    raw = phf.head_scores(hf, t)
    assert from_hf(hf) is m and phf.wrap(hf) is m and from_hf(m) is m
    wrapped = phf.head_scores(m, t)
    for kind in raw:
        torch.testing.assert_close(raw[kind], wrapped[kind])
        assert raw[kind].abs().sum() > 0
    _, cache = m.run_with_cache(t, names_filter=["blocks.0.attn.hook_q", "blocks.1.attn.hook_k"])
    assert set(cache) == {"blocks.0.attn.hook_q", "blocks.1.attn.hook_k"}
    with pytest.raises(ValueError, match="already has a pyinterp wrapper"):
        type(m)(hf)


def test_deep_copy_of_the_raw_model_gets_its_own_wrapper():
    import copy

    hf = build("gpt2")
    m = from_hf(hf)
    hf2 = copy.deepcopy(hf)
    m2 = from_hf(hf2)
    assert m2 is not m and m2.model is hf2


def test_attention_hooks_that_cannot_fire_raise():
    # GPT-2's reorder_and_upcast_attn path (eager) bypasses transformers' attention interface
    hf = build("gpt2", attn="eager", reorder_and_upcast_attn=True)
    m = from_hf(hf)
    t = toks()
    with torch.no_grad():
        m(t)  # no attention hook: fine
        _, cache = m.run_with_cache(t, names_filter="blocks.0.hook_resid_post")
        with pytest.raises(RuntimeError, match=r"blocks\.0\.attn\.hook_q.*did not fire"):
            m.run_with_cache(t, names_filter="blocks.0.attn.hook_q")
        with pytest.raises(RuntimeError, match="did not fire"):
            phf.head_scores(hf, t)


def test_unwrapped_attention_implementation_is_named():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register("my_attention", sdpa_attention_forward)  # a user's own kernel
    try:
        hf = build("llama", attn="my_attention")
        m = from_hf(hf)
        with torch.no_grad(), pytest.raises(RuntimeError, match="attn_implementation='my_attention'"):
            m.run_with_cache(toks(), names_filter="blocks.1.attn.hook_z")
        # a stop before the layer whose hook cannot fire is not an error
        with torch.no_grad():
            m.run_with_cache(toks(), names_filter="blocks.1.attn.hook_z", stop_at_layer=1)
    finally:
        del AttentionInterface._global_mapping["my_attention"]


def test_no_lasting_change_to_transformers_attention_registry():
    before = _attention_registry()
    hf_a, hf_b = build("qwen2", seed=1), build("qwen2", seed=1)
    m = from_hf(hf_a)
    assert _attention_registry() == before  # constructing the wrapper changes nothing
    t = toks()
    with torch.no_grad():
        ref_b = hf_b(t).logits
        with m.hooks([("blocks.0.attn.hook_q", lambda x, h: x * 0)]):
            assert _attention_registry() != before  # wrapped only while hooked ...
            assert torch.equal(hf_b(t).logits, ref_b)  # ... and other models run unchanged
            with m.hooks([("blocks.1.attn.hook_k", lambda x, h: x)]):
                pass
            assert _attention_registry() != before  # the outer hook is still active
        _, c = m.run_with_cache(t, names_filter="blocks.0.attn.hook_q")
    assert c["blocks.0.attn.hook_q"].shape == (2, 9, 4, 8)
    assert _attention_registry() == before  # restored exactly ("eager" absent again)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_generate_is_hf_generate(family):
    hf = build(family)
    m = from_hf(hf)
    t = toks(T=5)
    # greedy by default, like HF
    assert torch.equal(m.generate(t, max_new_tokens=6), hf.generate(t, max_new_tokens=6))
    assert torch.equal(m.generate(input_ids=t, max_length=9), hf.generate(t, max_length=9))
    # sampling: the same draws as HF under the same seed, and reproducible
    torch.manual_seed(3)
    ref = hf.generate(t, do_sample=True, top_k=10, max_new_tokens=6)
    out = m.generate(t, do_sample=True, top_k=10, max_new_tokens=6, seed=3)
    assert torch.equal(out, ref)
    # beam search
    beams = m.generate(t, num_beams=3, max_new_tokens=5)
    assert torch.equal(beams, hf.generate(t, num_beams=3, max_new_tokens=5))
    two = m.generate(t, num_beams=3, num_return_sequences=2, max_new_tokens=5)
    assert two.shape[0] == 4 and torch.equal(two[::2], beams)
    # hooks act during HF generation (steering); lists and stop tokens as pyinterp gives them
    vec = torch.randn(32) * 100
    with m.hooks([("blocks.0.hook_resid_post", lambda x, h: x + vec)]):
        steered = m.generate(t, max_new_tokens=6)
    assert not torch.equal(steered, hf.generate(t, max_new_tokens=6))
    lists = m.generate([[3, 4, 5], [6, 7, 8, 9, 10]], max_new_tokens=4, stop_tokens=[])
    assert [len(x) for x in lists] == [7, 9]
    assert lists[1] == m.generate([[6, 7, 8, 9, 10]], max_new_tokens=4, stop_tokens=[])[0]
    with pytest.raises(ValueError, match="exceeds the model's context"):
        from_hf(build("gpt2")).generate(t, max_new_tokens=40)
