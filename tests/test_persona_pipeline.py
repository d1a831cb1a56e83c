"""pyinterp.persona pipeline on tiny models: each step's maths against a direct computation
(run_with_cache + the reference op), a planted direction with a known persona vector, the
paper's filtering, steering/ablation positions, monitoring, screening, preventative steering,
bad inputs, and the Hugging Face adapter."""
import json

import pytest
import torch

from pyinterp import ops, persona
from pyinterp.data.tokenizer import ByteTokenizer
from pyinterp.models import Transformer, TransformerConfig
from pyinterp.persona import Sample

TRAIT = {
    "name": "sunny",
    "description": "talks about sunshine",
    "positive": ["Be sunny.", "Love sun."],
    "negative": ["Be grey.", "Hate sun."],
    "questions": ["Hi?", "Day?"],
    "eval_questions": ["Why?", "How?"],
    "lexicon": {"positive": ["sun"], "negative": ["rain"]},
}


def tiny(n_layers=3, d_model=16, seed=0):
    m = Transformer(TransformerConfig(n_layers=n_layers, d_model=d_model, n_heads=2, d_vocab=257,
                                      n_ctx=128, act_fn="gelu", seed=seed))
    m.tokenizer = ByteTokenizer()
    return m.eval()


def planted(d_model=16):
    """Blocks that write nothing (zero output projections): resid_post at every layer is the
    token + position embedding, so mean activations are known in closed form."""
    m = tiny(d_model=d_model)
    with torch.no_grad():
        for b in m.blocks:
            b.attn.W_O.zero_()
            b.attn.b_O.zero_()
            b.mlp.W_out.zero_()
            b.mlp.b_out.zero_()
    return m


def resid(model, tokens, layer, attention_mask=None):
    _, cache = model.run_with_cache(tokens, attention_mask=attention_mask,
                                    names_filter=f"blocks.{layer}.hook_resid_post")
    return cache[f"blocks.{layer}.hook_resid_post"]


def _samples(rng_seed=0, n=5):
    g = torch.Generator().manual_seed(rng_seed)
    out = []
    for i in range(n):
        p = torch.randint(1, 257, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        r = torch.randint(1, 257, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
        out.append(Sample(p, r))
    return out


# -- trait specification -----------------------------------------------------------------------

def test_trait_validation_names_the_field(tmp_path):
    t = persona.validate_trait(TRAIT)
    assert t.name == "sunny" and len(t.positive) == 2 and t.lexicon["positive"] == ["sun"]
    cases = [
        ({k: v for k, v in TRAIT.items() if k != "questions"}, "missing required field 'questions'"),
        ({**TRAIT, "positive": ["a", ""]}, r"'positive\[1\]' must be a non-empty string"),
        ({**TRAIT, "negative": ["a"]}, "'positive' and 'negative' must pair up"),
        ({**TRAIT, "colour": "red"}, r"unknown field\(s\) \['colour'\]"),
        ({**TRAIT, "name": 3}, "field 'name' must be a non-empty string"),
        ({**TRAIT, "eval_questions": "Why?"}, "field 'eval_questions' must be a list"),
        ({**TRAIT, "lexicon": {"positive": [1]}}, r"'lexicon.positive\[0\]' must be a non-empty"),
        ({**TRAIT, "lexicon": {"neutral": []}}, r"lexicon.neutral"),
    ]
    for d, msg in cases:
        with pytest.raises(persona.TraitSpecError, match=msg):
            persona.validate_trait(d)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**TRAIT, "positive": []}))
    with pytest.raises(persona.TraitSpecError, match=r"bad.json.*'positive' must have at least 1"):
        persona.load_trait(path)
    path.write_text("{not json")
    with pytest.raises(persona.TraitSpecError, match="not valid JSON"):
        persona.load_trait(path)
    good = tmp_path / "good.json"
    t.save(good)
    assert persona.load_trait(good) == t
    for name in persona.builtin_traits():
        b = persona.load_trait(name)
        assert b.lexicon["positive"] and len(b.positive) == 5 and len(b.eval_questions) == 20


def test_lexicon_judge_and_score_checks():
    t = persona.validate_trait(TRAIT)
    j = persona.LexiconJudge()
    assert j("q", "the sun, the sun!", t) == pytest.approx(50 + 50 * 2 / 3)
    assert j("q", "rain", t) == pytest.approx(25.0)
    assert j("q", "nothing here", t) == 50.0
    assert persona.coherence_score("q", "") == 0.0
    assert persona.coherence_score("q", "a fine clear answer") > persona.coherence_score("q", "aa aa aa aa aa")
    from pyinterp.persona.judge import score_all

    with pytest.raises(ValueError, match="judge must return a number in \\[0, 100\\]; for response 1"):
        score_all(lambda q, r, tr: 50 if r == "a" else 120, [("q", "a"), ("q", "b")], t, "judge")


def test_filter_follows_the_paper_and_explains_an_empty_set():
    res = persona.filter_responses([80, 50, 49, 90], [60, 50, 90, 10], positive=True)
    assert res.keep == [0, 1] and res.dropped_trait == 1 and res.dropped_coherence == 1
    res = persona.filter_responses([80, 50, 49, 10], [60, 50, 90, 90], positive=False)
    assert res.keep == [2, 3]
    with pytest.raises(persona.EmptyFilteredSetError,
                       match="4 generated, 3 dropped for trait < 50, 1 dropped for coherence < 50"):
        persona.filter_responses([80, 10, 20, 30], [10, 90, 90, 90], positive=True)


# -- generation and activations ----------------------------------------------------------------

def test_batched_generation_matches_one_prompt_at_a_time():
    m = tiny()
    prompts = [("Be sunny.", "Hi?"), ("A much longer system prompt here.", "Day?"), ("x", "y")]
    batched = persona.generate_responses(m, prompts, max_new_tokens=6, temperature=0, batch_size=3)
    for p, s in zip(prompts, batched):
        one = persona.generate_responses(m, [p], max_new_tokens=6, temperature=0, batch_size=1)[0]
        assert one.response_ids == s.response_ids and one.prompt_ids == s.prompt_ids
        assert s.text == m.tokenizer.decode(s.response_ids)


def test_mean_activations_and_projections_match_direct_computation():
    m = tiny()
    samples = _samples()
    layers = [0, 2]
    got = persona.mean_activations(m, samples, layers, batch_size=2)
    v = torch.randn(3, 16)
    proj = persona.projections(m, samples, v, layers, batch_size=3)
    last_prompt = persona.projections(m, samples, v, layers, reduce="last", prompt_only=True)
    for k, layer in enumerate(layers):
        means, pm, pl = [], [], []
        for s in samples:  # one sample at a time, no padding
            h = resid(m, torch.tensor([s.prompt_ids + s.response_ids]), layer)[0]
            means.append(h[len(s.prompt_ids):].mean(0))
            u = v / v.norm(dim=-1, keepdim=True)
            pm.append((h[len(s.prompt_ids):] @ u.T).mean(0))
            pl.append(h[len(s.prompt_ids) - 1] @ u.T)
        torch.testing.assert_close(got[k], torch.stack(means).mean(0), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(proj[k], torch.stack(pm), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(last_prompt[k], torch.stack(pl), atol=1e-5, rtol=1e-4)


# -- extraction --------------------------------------------------------------------------------

def test_extraction_is_the_mean_difference_of_kept_responses():
    m = tiny()
    # a judge that keeps a deterministic subset: even-length responses express the trait
    judge = lambda q, r, t: 80.0 if len(r) % 2 == 0 else 20.0  # noqa: E731
    pv = persona.extract_persona_vectors(m, TRAIT, judge=judge, coherence_judge=lambda q, r, t: 100.0,
                                         layers=[1, 2], n_samples=3, max_new_tokens=5, batch_size=5)
    pos, neg = pv.samples["positive"], pv.samples["negative"]
    assert all(len(s.text) % 2 == 0 for s in pos) and all(len(s.text) % 2 == 1 for s in neg)
    assert all(s.system in TRAIT["positive"] for s in pos)
    assert all(s.system in TRAIT["negative"] for s in neg)
    st = pv.stats["positive"]
    assert st["generated"] == 2 * 2 * 3 and st["kept"] + st["dropped_trait"] == st["generated"]
    for k, layer in enumerate([1, 2]):
        def mean(group):
            return torch.stack([resid(m, torch.tensor([s.prompt_ids + s.response_ids]), layer)[0]
                                [len(s.prompt_ids):].mean(0) for s in group]).mean(0)
        torch.testing.assert_close(pv.vector(layer), mean(pos) - mean(neg), atol=1e-5, rtol=1e-4)


def test_extraction_with_nothing_kept_says_how_many_were_dropped():
    m = tiny()
    with pytest.raises(persona.EmptyFilteredSetError, match=r"no positive response.*8 generated, 8 dropped for trait < 50"):
        persona.extract_persona_vectors(m, TRAIT, judge=lambda q, r, t: 10.0,
                                        coherence_judge=lambda q, r, t: 100.0, n_samples=2,
                                        max_new_tokens=3)


def test_planted_direction_is_recovered_and_screened_and_monitored():
    m = planted()
    X, Y = 120, 77
    prompts = [[5, 6, 7], [9, 10, 11]]
    pos = [Sample(p, [X] * 4) for p in prompts]
    neg = [Sample(p, [Y] * 4) for p in prompts]
    pv = persona.persona_vectors_from_samples(m, pos, neg, layers=[0, 2])
    want = (m.W_E[X] - m.W_E[Y]).detach()  # position embeddings cancel: same positions on both sides
    for layer in (0, 2):
        torch.testing.assert_close(pv.vector(layer), want, atol=1e-5, rtol=1e-5)
    # screening: dataset responses are X, the model's "own" responses Y
    u = want / want.norm()
    scr = persona.projection_difference(m, pos, want, 2, own=neg)
    torch.testing.assert_close(scr.per_sample, torch.full((2,), float(want @ u)), atol=1e-5, rtol=1e-5)
    assert scr.mean == pytest.approx(float(want.norm()), rel=1e-5)
    # monitoring: the last prompt token's projection
    got = persona.last_prompt_projection(m, [Sample(p, []) for p in ([1, 2, X], [3, Y])], want, 1)
    exp = torch.stack([(m.W_E[X] + m.pos_embed.W_pos[2]) @ u, (m.W_E[Y] + m.pos_embed.W_pos[1]) @ u]).detach()
    torch.testing.assert_close(got, exp, atol=1e-5, rtol=1e-5)


# -- steering and ablation ---------------------------------------------------------------------

def _recorded_generation(m, rec_layer, **steer_kw):
    seen = []
    rec = lambda x, hook: seen.append(x.detach().clone())  # noqa: E731
    tokens = torch.tensor([[1, 2, 3, 4], [0, 0, 5, 6]])
    am = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    ctx = persona.steer(m, **steer_kw) if steer_kw else torch.no_grad()
    with ctx, m.hooks([(f"blocks.{rec_layer}.hook_resid_post", rec)]):
        m.generate(tokens, attention_mask=am, max_new_tokens=3, temperature=0)
    return seen


@pytest.mark.parametrize("positions", ["all", "prompt", "response"])
def test_steering_adds_alpha_v_at_the_chosen_positions(positions):
    m = tiny()
    v = torch.randn(16)
    base = _recorded_generation(m, 1)
    steered = _recorded_generation(m, 1, vector=v, layer=1, alpha=2.5, positions=positions)
    # chunk 0 is the prompt; chunk 1 is the first generated token (same token either way:
    # the prompt's logits are unaffected unless the prompt is steered... compare chunk 1 only
    # when the prompt was not steered)
    d0 = steered[0] - base[0]
    if positions in ("all", "prompt"):
        torch.testing.assert_close(d0, (2.5 * v).expand_as(d0), atol=1e-5, rtol=1e-5)
    else:
        assert torch.equal(d0, torch.zeros_like(d0))
        d1 = steered[1] - base[1]
        torch.testing.assert_close(d1, (2.5 * v).expand_as(d1), atol=1e-5, rtol=1e-5)


def test_steering_by_mask_and_ablation():
    m = tiny()
    v = torch.randn(16)
    tokens = torch.randint(0, 257, (2, 6))
    mask = torch.zeros(2, 6)
    mask[:, 3:] = 1
    base = resid(m, tokens, 2)
    with persona.steer(m, v, 2, -1.5, mask=mask):
        out = resid(m, tokens, 2)
    torch.testing.assert_close(out - base, -1.5 * mask[..., None] * v, atol=1e-5, rtol=1e-5)
    with persona.ablate(m, v, [0, 2]):
        out = resid(m, tokens, 2)
        out0 = resid(m, tokens, 0)
    u = v / v.norm()
    assert (out @ u).abs().max() < 1e-5 and (out0 @ u).abs().max() < 1e-5


# -- choosing a layer, monitoring, preventative steering ---------------------------------------

def test_layer_choice_is_the_largest_steering_effect():
    m = tiny()
    pv = persona.PersonaVectors("sunny", [0, 1, 2], torch.randn(3, 16))
    judge = lambda q, r, t: float(len(r) % 7) * 10  # noqa: E731
    res = persona.steering_effect(m, pv, TRAIT, judge=judge, alpha=3.0, max_new_tokens=4, temperature=0)
    assert set(res["scores"]) == {0, 1, 2}
    assert res["best_layer"] == max(res["scores"], key=lambda l: res["scores"][l])
    assert persona.choose_layer(m, pv, TRAIT, judge=judge, alpha=3.0, max_new_tokens=4,
                                temperature=0) == res["best_layer"]


def test_monitor_correlates_last_prompt_projection_with_scores():
    m = tiny()
    pv = persona.PersonaVectors("sunny", [1], torch.randn(1, 16))
    judge = lambda q, r, t: float(len(r) % 5) * 20  # noqa: E731
    res = persona.monitor(m, pv, TRAIT, 1, judge=judge, max_new_tokens=4, temperature=0)
    n = (2 + 2 + 1) * 2  # (positive + negative + neutral system prompts) x eval questions
    assert res.projections.shape == (n,) and res.scores.shape == (n,)
    direct = persona.last_prompt_projection(m, res.samples, pv.vector(1), 1)
    torch.testing.assert_close(res.projections, direct)
    assert res.correlation == pytest.approx(persona.pearson(res.projections, res.scores))
    x = torch.arange(10.0)
    assert persona.pearson(x, 2 * x + 1) == pytest.approx(1.0)
    assert persona.pearson(x, -x) == pytest.approx(-1.0)


def test_preventative_steering_trains_with_the_hook_and_evaluates_without():
    from pyinterp.models import TrainConfig

    m = tiny()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    samples = _samples(n=4)
    cfg = TrainConfig(max_steps=3, batch_size=2, lr=1e-2, warmup_steps=0, progress=False)
    v = torch.randn(16)
    plain = persona.finetune(m, samples, cfg=cfg)
    zero = persona.finetune(m, samples, cfg=cfg, vector=v, layer=1, alpha=0.0)
    steered = persona.finetune(m, samples, cfg=cfg, vector=v, layer=1, alpha=5.0)
    assert all(torch.equal(before[k], t) for k, t in m.state_dict().items())  # a copy was trained
    ps, zs, ss = plain.state_dict(), zero.state_dict(), steered.state_dict()
    assert all(torch.equal(ps[k], zs[k]) for k in ps)  # alpha 0 == plain finetuning
    assert any(not torch.equal(ps[k], ss[k]) for k in ps)  # the hook was active in training
    assert all(not hp.active for hp in steered.hook_dict.values())  # and is gone afterwards
    pv = persona.PersonaVectors("sunny", [1], v[None])
    out = persona.compare_finetuning(m, samples, pv, 1, TRAIT, judge=lambda q, r, t: 50.0, cfg=cfg,
                                     max_new_tokens=3, temperature=0)
    assert set(out) == {"base", "plain_finetune", "preventative_steering", "inference_steering"}
    assert out["base"]["projection_shift"] == 0.0
    assert out["plain_finetune"]["projection_shift"] == out["inference_steering"]["projection_shift"]


# -- bad input ---------------------------------------------------------------------------------

def test_bad_inputs_are_named():
    m = tiny()
    with pytest.raises(ValueError, match="d_model=16"):
        persona.steer(m, torch.randn(12), 1, 1.0).__enter__()
    with pytest.raises(ValueError, match="layer=5 is out of range: the model has 3 layers"):
        persona.steer(m, torch.randn(16), 5, 1.0).__enter__()
    with pytest.raises(ValueError, match=r"layers\[1\]=3 is out of range"):
        persona.ProjectionMonitor(m, torch.randn(2, 16), layers=[0, 3])
    with pytest.raises(ValueError, match="vectors must have last dim d_model=16"):
        persona.ProjectionMonitor(m, torch.randn(2, 8))
    with pytest.raises(ValueError, match="persona vectors have D=8 but the model's d_model is 16"):
        persona.PersonaVectors("t", [0], torch.randn(1, 8)).check_model(m)
    with pytest.raises(ValueError, match="layer=7 is out of range"):
        persona.last_prompt_projection(m, [("a", "b")], torch.randn(16), 7)
    with pytest.raises(ValueError, match="positions must be one of"):
        persona.steer(m, torch.randn(16), 0, 1.0, positions="middle").__enter__()
    with pytest.raises(ValueError, match="layer 2 was not extracted"):
        persona.PersonaVectors("t", [0], torch.randn(1, 16)).vector(2)


def test_save_load_roundtrip(tmp_path):
    pv = persona.PersonaVectors("sunny", [0, 2], torch.randn(2, 16), stats={"positive": {"kept": 3}})
    back = persona.PersonaVectors.load(pv.save(tmp_path / "pv"))
    assert back.layers == [0, 2] and back.trait == "sunny" and back.stats == pv.stats
    assert torch.equal(back.vectors, pv.vectors)


# -- the streaming monitor on a model ----------------------------------------------------------

def test_projection_monitor_forward_and_generation():
    m = tiny()
    tokens = torch.randint(1, 257, (3, 7))
    am = torch.ones(3, 7, dtype=torch.long)
    am[0, :3] = 0
    v = torch.randn(2, 16)
    with persona.ProjectionMonitor(m, v, select="prompt", prompt_mask=am, traces=True) as mon:
        m(tokens, attention_mask=am)
    hs = [resid(m, tokens, l, am) for l in range(3)]
    for red, got in (("mean", mon.mean()), ("last", mon.last()), ("sum", mon.sum())):
        torch.testing.assert_close(got, ops.persona_project(hs, v, am, red, backend="reference"),
                                   atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mon.trace(), ops.persona_project(hs, v, am, "none", backend="reference"),
                               atol=1e-5, rtol=1e-4)
    # generation: response chunks only
    mon = persona.ProjectionMonitor(m, v, layers=[1], select="response")
    with mon:
        out = m.generate(tokens, attention_mask=am, max_new_tokens=4, temperature=0)
    full_mask = torch.cat([am, torch.ones(3, 4, dtype=torch.long)], 1)
    h = resid(m, out, 1, full_mask)
    sel = torch.zeros(3, 11)
    sel[:, 7:10] = 1  # the last generated token is never fed back through the model
    torch.testing.assert_close(mon.mean(), ops.persona_project([h], v, sel, "mean", backend="reference"),
                               atol=1e-5, rtol=1e-4)
    assert torch.equal(mon.count(), torch.full((3,), 3.0))


# -- Hugging Face models through the adapter ---------------------------------------------------

def test_pipeline_runs_on_a_hugging_face_model():
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=257, n_positions=64, n_embd=16, n_layer=2, n_head=2)).eval()
    from pyinterp.models import from_hf

    model = from_hf(hf, tokenizer=ByteTokenizer())
    samples = _samples(n=3)
    got = persona.mean_activations(model, samples, [1])
    ref = torch.stack([resid(model, torch.tensor([s.prompt_ids + s.response_ids]), 1)[0]
                       [len(s.prompt_ids):].mean(0) for s in samples]).mean(0)
    torch.testing.assert_close(got[0], ref, atol=1e-5, rtol=1e-4)
    v = torch.randn(16)
    with persona.steer(model, v, 0, 2.0):
        out = resid(model, torch.tensor([[1, 2, 3]]), 0)
    torch.testing.assert_close(out - resid(model, torch.tensor([[1, 2, 3]]), 0),
                               (2.0 * v).expand(1, 3, 16), atol=1e-5, rtol=1e-5)
    gen = persona.generate_responses(model, [("a", "b"), ("longer system", "q")], max_new_tokens=3,
                                     temperature=0)
    assert all(len(s.response_ids) == 3 for s in gen)
