"""pyinterp.attention: head scores agree with TransformerLens's head detector (both modes), on
TransformerLens, pyinterp and Hugging Face models; induction, copying, ICL scores; views."""
import json
import warnings

import pytest
import torch

from pyinterp import attention
from pyinterp.attention.heads import earlier_count

tl = pytest.importorskip("transformer_lens", reason="transformer-lens is in the test extra")
from transformer_lens.head_detector import (  # noqa: E402
    compute_head_attention_similarity_score,
    detect_head,
    get_duplicate_token_head_detection_pattern,
    get_induction_head_detection_pattern,
    get_previous_token_head_detection_pattern,
)

TL_NAMES = {"previous_token": "previous_token_head", "duplicate_token": "duplicate_token_head",
            "induction": "induction_head"}
DET = {"previous_token": get_previous_token_head_detection_pattern,
       "duplicate_token": get_duplicate_token_head_detection_pattern,
       "induction": get_induction_head_detection_pattern}
EXCLUDES = [(False, False), (True, False), (False, True), (True, True)]


def _tl_model(**overrides):
    cfg = dict(n_layers=2, d_model=64, n_ctx=64, d_head=16, n_heads=4, d_vocab=20, act_fn="relu",
               attn_only=True, seed=0, initializer_range=0.3)
    cfg.update(overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = tl.HookedTransformer(tl.HookedTransformerConfig(**cfg))
    return model.eval()


def _detect_head_batch(model, tokens, kind, mode, exclude_bos, exclude_current_token):
    """TransformerLens's own detect_head on each row of ``tokens``, averaged (as for a list of prompts)."""
    scores = []
    for b in range(tokens.shape[0]):
        model.to_tokens = lambda seq, _b=b, **kw: tokens[_b:_b + 1]  # no tokenizer offline
        scores.append(detect_head(model, "-", TL_NAMES[kind], exclude_bos=exclude_bos,
                                  exclude_current_token=exclude_current_token, error_measure=mode))
    del model.to_tokens
    return torch.stack(scores).mean(0)


def _tol(mode):
    # detect_head rounds the "abs" score to 3 decimals; ours is unrounded.
    return dict(atol=1e-3 if mode == "abs" else 1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["mul", "abs"])
def test_head_scores_match_transformer_lens(mode):
    model = _tl_model()
    tokens = torch.randint(0, 6, (3, 30))  # small vocabulary: many duplicates
    for exclude_bos, exclude_current_token in EXCLUDES:
        ours = attention.head_scores(model, tokens, mode=mode, exclude_bos=exclude_bos,
                                     exclude_current_token=exclude_current_token)
        for kind in TL_NAMES:
            want = _detect_head_batch(model, tokens, kind, mode, exclude_bos, exclude_current_token)
            torch.testing.assert_close(ours[kind], want.float(), **_tol(mode),
                                       msg=f"{kind} {mode} bos={exclude_bos} cur={exclude_current_token}")


@pytest.mark.parametrize("mode", ["mul", "abs"])
def test_head_scores_transformer_lens_rotary_gqa(mode):
    """Rotary models expose rotated q/k at hook_rot_q/k; GQA models have fewer key heads."""
    model = _tl_model(positional_embedding_type="rotary", rotary_dim=16, n_key_value_heads=2,
                      attn_only=False, d_mlp=32, normalization_type="LN")
    tokens = torch.randint(0, 5, (2, 25))
    ours = attention.head_scores(model, tokens, mode=mode, exclude_current_token=True)
    for kind in TL_NAMES:
        want = _detect_head_batch(model, tokens, kind, mode, False, True)
        torch.testing.assert_close(ours[kind], want.float(), **_tol(mode), msg=kind)


def _scores_from_patterns(patterns, tokens, kind, mode, exclude_bos=False, exclude_current_token=False):
    """TransformerLens's similarity score applied to explicit patterns {layer: (B, H, T, T)}."""
    L = len(patterns)
    B, H = patterns[0].shape[:2]
    out = torch.zeros(L, H)
    for layer in range(L):
        for h in range(H):
            vals = [compute_head_attention_similarity_score(
                patterns[layer][b, h].float().clone(), DET[kind](tokens[b:b + 1]),
                exclude_bos=exclude_bos, exclude_current_token=exclude_current_token,
                error_measure=mode) for b in range(B)]
            out[layer, h] = sum(vals) / B
    return out


@pytest.mark.parametrize("mode", ["mul", "abs"])
def test_head_scores_on_pyinterp_transformer(mode):
    from pyinterp.models import Transformer, TransformerConfig

    model = Transformer(TransformerConfig(n_layers=2, d_model=32, n_heads=4, d_vocab=16, n_ctx=32,
                                          act_fn=None, positional="rotary", init_std=0.3))
    tokens = torch.randint(0, 5, (2, 20))
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    patterns = {i: cache[f"blocks.{i}.attn.hook_pattern"] for i in range(2)}
    ours = attention.head_scores(model, tokens, mode=mode, exclude_bos=True)
    for kind in TL_NAMES:
        want = _scores_from_patterns(patterns, tokens, kind, mode, exclude_bos=True)
        torch.testing.assert_close(ours[kind], want, **_tol(mode), msg=kind)


def _hf_models():
    transformers = pytest.importorskip("transformers", reason="Hugging Face transformers is needed")
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=16, n_positions=32, attn_implementation="sdpa"))
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=64, vocab_size=16, max_position_embeddings=32, attn_implementation="sdpa"))
    return {"gpt2": gpt2.eval(), "llama": llama.eval()}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_head_scores_on_hugging_face_sdpa(family):
    """The adapter hooks q/k inside SDPA; the scores match the eager pattern (output_attentions)."""
    from pyinterp.models import from_hf

    hf = _hf_models()[family]
    model = from_hf(hf)
    tokens = torch.randint(0, 5, (2, 20))
    ours = attention.head_scores(model, tokens, mode="mul")
    hf.set_attn_implementation("eager")
    with torch.no_grad():
        att = hf(tokens, output_attentions=True).attentions
    hf.set_attn_implementation("sdpa")
    patterns = {i: a for i, a in enumerate(att)}
    for kind in TL_NAMES:
        want = _scores_from_patterns(patterns, tokens, kind, "mul")
        torch.testing.assert_close(ours[kind], want, atol=1e-5, rtol=0, msg=kind)


def test_earlier_count():
    tokens = torch.tensor([[3, 1, 3, 3, 2, 1], [0, 0, 0, 0, 0, 0]])
    assert earlier_count(tokens).tolist() == [[0, 0, 1, 2, 0, 1], [0, 1, 2, 3, 4, 5]]


def test_induction_scores_match_patterns():
    model = _tl_model()
    res = attention.induction_scores(model, seq_len=8, batch=4, seed=1)
    assert res.scores.shape == (2, 4)
    _, cache = model.run_with_cache(res.tokens)
    mask = res.mask.double()
    for layer in range(2):
        pat = cache["pattern", layer].double()  # (B, H, T, T)
        det = torch.stack([get_induction_head_detection_pattern(res.tokens[b:b + 1]) for b in range(4)])
        mass = (pat * det[:, None]).sum(-1)  # (B, H, T)
        want = (mass * mask[:, None]).sum((0, 2)) / mask.sum()
        torch.testing.assert_close(res.scores[layer].double(), want, atol=1e-5, rtol=0)


def test_copying_scores_match_full_ov_eigenvalues():
    model = _tl_model(d_vocab=24)
    got = attention.copying_scores(model)
    frac = attention.copying_scores(model, kind="fraction")
    full_ov = model.W_E @ model.OV @ model.W_U  # TransformerLens FactoredMatrix (L, H, V, V)
    ev = full_ov.eigenvalues  # (L, H, d_head), never building V x V
    want = (ev.real.sum(-1) / ev.abs().sum(-1)).float()
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    torch.testing.assert_close(frac, (ev.real > 0).float().mean(-1), atol=0, rtol=0)
    assert ((got >= -1) & (got <= 1)).all()


def test_copying_score_of_identity_ov_is_one():
    from pyinterp.models import Transformer, TransformerConfig

    model = Transformer(TransformerConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, d_vocab=8,
                                          n_ctx=8, act_fn=None, tied_embeddings=True))
    with torch.no_grad():
        model.embed.W_E.copy_(torch.eye(8))
        eye = torch.eye(8)
        model.blocks[0].attn.W_V.copy_(torch.stack([eye[:, :4], eye[:, 4:]]))
        model.blocks[0].attn.W_O.copy_(torch.stack([eye[:4], -eye[4:]]))
    got = attention.copying_scores(model)
    torch.testing.assert_close(got, torch.tensor([[1.0, -1.0]]), atol=1e-6, rtol=0)


def test_icl_scores():
    model = _tl_model()
    tokens = torch.randint(0, 20, (3, 60))
    res = attention.icl_scores(model, tokens)
    assert (res["early"], res["late"]) == (round(60 * 50 / 512), round(60 * 500 / 512))
    with torch.no_grad():
        logp = torch.log_softmax(model(tokens)[:, :-1], -1)
    loss = -logp.gather(-1, tokens[:, 1:, None])[..., 0]
    want = (loss[:, res["late"] - 1] - loss[:, res["early"] - 1]).mean()
    assert abs(res["score"] - float(want)) < 1e-5
    assert res["loss_curve"].shape == (59,)
    long_model = _tl_model(n_ctx=512, n_layers=1)
    t512 = attention.icl_scores(long_model, torch.randint(0, 20, (1, 512)))
    assert (t512["early"], t512["late"]) == (50, 500)
    with pytest.raises(ValueError, match="early"):
        attention.icl_scores(model, tokens, early=10, late=5)


def test_pattern_view_html_and_json(tmp_path):
    model = _tl_model()
    tokens = torch.randint(0, 20, (12,))
    view = attention.pattern_view(model, tokens, heads=[(1, 2), (0, 0)],
                                  str_tokens=[f"t{i}</script>" for i in range(12)])
    _, cache = model.run_with_cache(tokens[None])
    torch.testing.assert_close(torch.tensor(view["attention"][0]), cache["pattern", 1][0, 2], atol=1e-6, rtol=0)
    assert view["attention_head_names"] == ["L1H2", "L0H0"]
    page = attention.save_html(view, tmp_path / "p.html").read_text()
    assert "L1H2" in page and "<script>" in page and "t3<\\/script>" in page
    loaded = json.loads(attention.save_circuitsvis_json(view, tmp_path / "p.json").read_text())
    assert set(loaded) == {"tokens", "attention", "attention_head_names"}
    assert len(loaded["attention"][1]) == 12


def test_head_scores_bad_input():
    model = _tl_model()
    tokens = torch.randint(0, 6, (2, 10))
    with pytest.raises(ValueError, match="kinds: unknown head kind"):
        attention.head_scores(model, tokens, kinds=("copying",))
    with pytest.raises(ValueError, match="mode must be one of"):
        attention.head_scores(model, tokens, mode="sq")
    with pytest.raises(ValueError, match="tokens must have shape"):
        attention.head_scores(model, tokens[0])
    with pytest.raises(ValueError, match="T >= 2"):
        attention.head_scores(model, tokens[:, :1])
    with pytest.raises(TypeError, match="tokens must be an integer"):
        attention.head_scores(model, tokens.float())
    with pytest.raises(ValueError, match="heads: .* out of range"):
        attention.pattern_view(model, tokens[0], heads=[(2, 0)])
