"""pyinterp.circuits: the local replacement model, streamed attribution against the dense
reference (autograd through the real model, dense adjacency), pruning, scores, interventions,
the graph JSON and the HTML view."""
import json
import shutil

import pytest
import torch

from circuits_testing import NullDictionary, RandomDictionary, tiny_model, tokens
from pyinterp.circuits import LocalReplacement, NeuronDictionary, attribute
from pyinterp.circuits.interventions import (
    ablate,
    compare_ablations,
    demeaned_logit,
    intervene,
)
from pyinterp.circuits.reference import dense_attribution

D = 16


def dictionaries():
    return {
        "null": NullDictionary(2, D),
        "clt_skip": RandomDictionary(2, D, skip=True),
        "per_layer": RandomDictionary(2, D, cross_layer=False, seed=1),
        "resid_mid_skip": RandomDictionary(2, D, input_site="resid_mid", skip=True, seed=2),
    }


@pytest.mark.parametrize("name", list(dictionaries()))
def test_replacement_forward_reproduces_the_model(name):
    m = tiny_model()
    t = tokens()
    rm = LocalReplacement(m, dictionaries()[name], t, dtype=torch.float64)
    with torch.no_grad():
        ref = m(t[None])[0]  # plain forward (SDPA, no hooks)
    torch.testing.assert_close(rm.forward(), ref, atol=1e-12, rtol=0)


def test_perfect_dictionary_has_no_error_and_same_forward():
    m = tiny_model(act_fn="relu")
    t = tokens()
    rm = LocalReplacement(m, NeuronDictionary(m), t, dtype=torch.float64)
    for e in rm.errors:
        assert e.abs().max() < 1e-12
    torch.testing.assert_close(rm.forward(), m(t[None])[0].detach(), atol=1e-12, rtol=0)
    # and the graph's targets are fully explained by features and embeddings
    g = attribute(m, NeuronDictionary(m), t, dtype=torch.float64)
    assert g.scores["replacement"] == pytest.approx(1.0)
    assert g.scores["completeness"] == pytest.approx(1.0)


def test_float32_model_forward_close():
    m = tiny_model(dtype="float32")
    t = tokens()
    rm = LocalReplacement(m, RandomDictionary(2, D, skip=True, dtype=torch.float32), t)
    torch.testing.assert_close(rm.forward(), m(t[None])[0].detach(), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(dictionaries()))
def test_streamed_attribution_matches_dense_reference(name):
    m = tiny_model()
    t = tokens()
    dic = dictionaries()[name]
    g = attribute(m, dic, t, dtype=torch.float64)
    ref = dense_attribution(m, dic, t)
    A = ref["adjacency"]
    assert g.n_nodes == ref["n_nodes"] and g.n_features == ref["n_features"]
    assert torch.equal(torch.stack([g.feat_layer, g.feat_pos, g.feat_index], 1), ref["feat"])
    assert torch.equal(g.logit_tokens, ref["logit_tokens"])
    torch.testing.assert_close(g.root_rows, A[g.logit_start:], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(g.influence, ref["influence"], atol=1e-12, rtol=1e-10)
    assert g.scores["replacement"] == pytest.approx(ref["replacement"], abs=1e-12)
    assert g.scores["completeness"] == pytest.approx(ref["completeness"], abs=1e-12)
    assert torch.equal(g.node_mask, ref["node_mask"])
    em = ref["edge_mask"] & (A != 0)
    assert set(map(tuple, g.edges.tolist())) == set(map(tuple, em.nonzero().tolist()))
    torch.testing.assert_close(g.edge_weight, A[g.edges[:, 0], g.edges[:, 1]], atol=1e-12, rtol=1e-10)


def test_batching_and_readout_do_not_change_the_graph():
    m = tiny_model()
    t = tokens()
    dic = RandomDictionary(2, D, skip=True)
    a = attribute(m, dic, t, dtype=torch.float64)
    b = attribute(m, dic, t, dtype=torch.float64, batch_size=1, readout="gather")
    torch.testing.assert_close(a.influence, b.influence, atol=1e-13, rtol=1e-11)
    assert torch.equal(a.edges, b.edges)


def test_feature_target_row_matches_reference():
    m = tiny_model()
    t = tokens()
    dic = RandomDictionary(2, D, skip=True)
    ref = dense_attribution(m, dic, t)
    j = int((ref["feat"][:, 0] == 1).nonzero()[0])  # the first layer-1 feature
    l, p, f = ref["feat"][j].tolist()
    g = attribute(m, dic, t, features=[(l, p, f)], dtype=torch.float64)
    assert g.n_features == ref["n_features"] and int(g.logit_tokens.numel()) == 0
    root = int(g.roots[0])
    assert root == j and bool(g.node_mask[root])
    n = g.n_nodes  # no logit nodes in this graph: compare the feature/error/embedding columns
    torch.testing.assert_close(g.root_rows[0], ref["adjacency"][j, :n], atol=1e-12, rtol=1e-10)
    assert g.influence[j + 1:g.error_start][g.feat_layer[j + 1:] >= l].abs().max() == 0


def test_feature_budget_caps_rows():
    m = tiny_model()
    t = tokens()
    dic = RandomDictionary(2, D, skip=True)
    full = attribute(m, dic, t, dtype=torch.float64)
    cap = attribute(m, dic, t, dtype=torch.float64, max_feature_nodes=12)
    assert cap.stats["rows_computed"] <= 12 + cap.logit_tokens.numel()
    assert cap.stats["rows_computed"] < full.stats["rows_computed"]
    # the most influential features are expanded first: their influence is still close
    top = full.influence[:full.n_features].topk(3).indices
    torch.testing.assert_close(cap.influence[top], full.influence[top], rtol=0.3, atol=0)


@pytest.mark.parametrize("name", ["clt_skip", "resid_mid_skip"])
def test_direct_effect_ablation_equals_minus_the_edges(name):
    m = tiny_model()
    t = tokens()
    dic = dictionaries()[name]
    g = attribute(m, dic, t, dtype=torch.float64)
    tok = int(g.logit_tokens[0])
    clean = intervene(m, dic, t, [], direct_effects=True)
    torch.testing.assert_close(clean, m(t[None])[0].detach(), atol=1e-12, rtol=0)
    row = g.root_rows[0]
    top = row[:g.n_features].abs().topk(3).indices.tolist()
    for group in ([top[0]], top):
        feats = [(int(g.feat_layer[j]), int(g.feat_pos[j]), int(g.feat_index[j])) for j in group]
        new = ablate(m, dic, t, feats, direct_effects=True)
        change = demeaned_logit(new, tok) - demeaned_logit(clean, tok)
        assert change == pytest.approx(-float(row[group].sum()), abs=1e-10)
    rows = compare_ablations(g, m, dic, [[top[0]]])
    assert rows[0]["predicted"] == pytest.approx(-float(row[top[0]]))
    # clamping to twice the value adds the edge once more
    l, p, f = feats[0]
    v = float(g.feat_value[top[0]])
    new = intervene(m, dic, t, [(l, p, f, 2 * v)], direct_effects=True)
    assert demeaned_logit(new, tok) - demeaned_logit(clean, tok) == pytest.approx(float(row[top[0]]), abs=1e-10)


def test_graph_json_is_circuit_tracer_format():
    m = tiny_model()
    t = tokens()
    g = attribute(m, RandomDictionary(2, D, skip=True), t, dtype=torch.float64, decode=lambda i: f"<{i}>\n",
                  prompt="a prompt")
    d = json.loads(g.to_json("slug-1"))
    assert set(d) == {"metadata", "qParams", "nodes", "links"}
    meta = d["metadata"]
    for k, typ in (("slug", str), ("scan", str), ("transcoder_list", list), ("prompt_tokens", list),
                   ("prompt", str), ("node_threshold", float)):
        assert isinstance(meta[k], typ), k
    assert meta["prompt_tokens"][0].endswith("⏎")
    assert set(d["qParams"]) == {"pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"}
    fields = {"node_id": str, "feature": int, "layer": str, "ctx_idx": int, "feature_type": str,
              "token_prob": float, "is_target_logit": bool, "run_idx": int, "reverse_ctx_idx": int,
              "jsNodeId": str, "clerp": str}
    ids = [n["node_id"] for n in d["nodes"]]
    assert len(ids) == len(set(ids))
    kinds = {n["feature_type"] for n in d["nodes"]}
    assert kinds <= {"cross layer transcoder", "mlp reconstruction error", "embedding", "logit"}
    assert {"embedding", "logit"} <= kinds
    for n in d["nodes"]:
        for k, typ in fields.items():
            assert isinstance(n[k], typ), (k, n)
    assert sum(n["feature_type"] == "embedding" for n in d["nodes"]) == t.numel()
    assert sum(n["is_target_logit"] for n in d["nodes"]) == 1
    idset = set(ids)
    assert d["links"] and all(l["source"] in idset and l["target"] in idset and isinstance(l["weight"], float)
                              for l in d["links"])


def _browser():
    import importlib.util
    import os
    from pathlib import Path

    if not (os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")):
        if os.environ.get("PYINTERP_REQUIRE_BROWSER") == "1":  # CI: a missing browser is a failure
            raise RuntimeError("PYINTERP_REQUIRE_BROWSER=1 but no chromium is installed")
        pytest.skip("needs headless Chromium (Debian package 'chromium'; .ci/run installs it)")
    spec = importlib.util.spec_from_file_location("check_pages", Path(__file__).parents[1] / "tools" / "check_pages.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_html_view_in_headless_chromium(tmp_path):
    """The graph page from file:// without network (tools/check_pages.py: no console error, no
    request), then hover and click driven through the DevTools protocol."""
    from pyinterp.circuits.html import write_html

    check_pages = _browser()
    m = tiny_model()
    t = tokens()
    g = attribute(m, RandomDictionary(2, D, skip=True), t, dtype=torch.float64)
    d = g.to_dict("html")
    feats = {n["node_id"]: {"contexts": [{"tokens": ["x", "<y>", "z"], "at": 1, "value": 1.5}],
                            "logits_up": [["up", 1.0]], "logits_down": [["down", -1.0]]}
             for n in d["nodes"] if n["feature_type"] == "cross layer transcoder"}
    p = write_html(g, tmp_path / "g.html", features=feats)
    with check_pages.Chromium() as browser:
        res = check_pages.check_page(browser, p)
        assert res["problems"] == [] and res["external"] == []
        ev = browser.evaluate
        assert ev("document.querySelectorAll('#graph .node').length") == len(d["nodes"])
        assert ev("document.querySelectorAll('#graph .edge').length") == len(d["links"])
        feat = ev("document.querySelector('#graph circle.node').dataset.id")
        node = f"document.querySelector('#graph .node[data-id=\"{feat}\"]')"
        ev(f"{node}.dispatchEvent(new MouseEvent('mouseenter'))")
        text = ev("document.getElementById('detail').textContent")
        assert "top activating contexts" in text and "x<y>z" in text and "logit effects" in text
        assert "strongest inputs" in text
        assert ev("document.querySelectorAll('#graph .edge.hl').length") > 0
        ev(f"{node}.dispatchEvent(new MouseEvent('mouseleave'))")
        ev(f"{node}.dispatchEvent(new MouseEvent('click'))")
        assert ev(f"{node}.classList.contains('pinned')")
        assert ev("document.querySelectorAll('#pins .pin').length") == 1
        assert "top activating contexts" in ev("document.getElementById('detail').textContent")  # pinned stays shown
        ev(f"{node}.dispatchEvent(new MouseEvent('click'))")                               # click again: unpinned
        assert ev("document.querySelectorAll('#pins .pin').length") == 0


def test_bad_inputs():
    m = tiny_model()
    t = tokens()
    with pytest.raises(ValueError, match="n_layers=3"):
        attribute(m, RandomDictionary(3, D), t)
    with pytest.raises(TypeError, match="CircuitDictionary"):
        attribute(m, object(), t)
    with pytest.raises(ValueError, match="one prompt"):
        attribute(m, NullDictionary(2, D), torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="not active"):
        attribute(m, RandomDictionary(2, D), t, features=[(0, 0, 10_000)])
    with pytest.raises(ValueError, match="node_threshold"):
        attribute(m, NullDictionary(2, D), t, node_threshold=1.5)
    with pytest.raises(ValueError, match="attention-only"):
        attribute(tiny_model(act_fn=None), NullDictionary(2, D), t)
    with pytest.raises(ValueError, match="out of range"):
        ablate(m, RandomDictionary(2, D), t, [(0, 99, 0)])


def _edges_sum_to_the_logit(model, dic, t, atol, dtype=torch.float32):
    """Attribution is complete: a logit row's edges plus the bias terms (the replacement
    model with every node zeroed) give the demeaned logit."""
    g = attribute(model, dic, t, dtype=dtype)
    rm = LocalReplacement(model, dic, t, dtype=dtype)
    zero = rm.forward(values=[torch.zeros_like(v) for v, _ in rm.codes],
                      errors=[torch.zeros_like(e) for e in rm.errors], embed=torch.zeros_like(rm.embed))
    for j, tok in enumerate(g.logit_tokens.tolist()):
        total = float(g.root_rows[j].sum()) + demeaned_logit(zero, tok)
        assert total == pytest.approx(demeaned_logit(rm.logits, tok), abs=atol)
    return g


def test_edges_sum_to_the_logit_pyinterp():
    m = tiny_model()
    _edges_sum_to_the_logit(m, RandomDictionary(2, D, skip=True), tokens(), 1e-10, torch.float64)


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen3"])
def test_hugging_face_models(family):
    pytest.importorskip("transformers", reason="the from_hf adapter needs transformers (pip install 'pyinterp[hf]')")
    from hf_testing import build, toks
    from pyinterp.models import from_hf

    m = from_hf(build(family))
    t = toks(B=1, T=9)[0]
    dic = RandomDictionary(2, 32, skip=True, dtype=torch.float32)
    rm = LocalReplacement(m, dic, t)
    torch.testing.assert_close(rm.forward(), m(t[None])[0].detach(), atol=1e-4, rtol=1e-4)
    _edges_sum_to_the_logit(m, dic, t, 5e-4)  # float32: sums of ~1,000 terms


@pytest.mark.parametrize("norm,pos", [("LN", "standard"), ("RMS", "rotary"), ("LNPre", "standard")])
def test_transformer_lens_models(norm, pos):
    tl = pytest.importorskip("transformer_lens", reason="needs transformer-lens (pip install 'pyinterp[peers]')")
    from pyinterp.models import from_transformer_lens

    cfg = tl.HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=50,
                                     n_ctx=16, act_fn="gelu", positional_embedding_type=pos,
                                     normalization_type=norm, seed=0, dtype=torch.float64)
    m = from_transformer_lens(tl.HookedTransformer(cfg))
    t = tokens(T=9, vocab=50)
    dic = RandomDictionary(2, 32, skip=True)
    rm = LocalReplacement(m, dic, t, dtype=torch.float64)
    torch.testing.assert_close(rm.forward(), m(t[None])[0].detach(), atol=1e-10, rtol=0)
    _edges_sum_to_the_logit(m, dic, t, 1e-10, torch.float64)
    # the direct-effect intervention (TransformerLens norms have hook_scale) equals minus the edge
    g = attribute(m, dic, t, dtype=torch.float64)
    j = int(g.root_rows[0, :g.n_features].abs().argmax())
    tok = int(g.logit_tokens[0])
    f = (int(g.feat_layer[j]), int(g.feat_pos[j]), int(g.feat_index[j]))
    clean = intervene(m, dic, t, [], direct_effects=True)
    new = ablate(m, dic, t, [f], direct_effects=True)
    assert demeaned_logit(new, tok) - demeaned_logit(clean, tok) == pytest.approx(-float(g.root_rows[0, j]), abs=1e-9)


def test_spliced_logits():
    from pyinterp.circuits import spliced_logits

    m = tiny_model(act_fn="relu")
    rows = torch.randint(0, 29, (3, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = m(rows)
        torch.testing.assert_close(spliced_logits(m, NeuronDictionary(m), rows), ref, atol=1e-12, rtol=0)
        zero = m.run_with_hooks(rows, fwd_hooks=[(f"blocks.{l}.hook_mlp_out", lambda x, hook: torch.zeros_like(x))
                                                 for l in range(2)])
    torch.testing.assert_close(spliced_logits(m, NullDictionary(2, D), rows), zero, atol=1e-12, rtol=0)


def test_feature_cards_top_contexts_and_logit_effects():
    from pyinterp.circuits import feature_cards

    m = tiny_model()
    dic = RandomDictionary(2, D, skip=True)
    rows = torch.randint(0, 29, (6, 12), generator=torch.Generator().manual_seed(2))
    keys = []
    for layer in range(2):  # the feature that fires most often in each layer
        _, cache = m.run_with_cache(rows, names_filter=[f"blocks.{layer}.ln2.hook_normalized"])
        v, i = dic.encode(layer, cache[f"blocks.{layer}.ln2.hook_normalized"].reshape(-1, D))
        keys.append((layer, int(torch.bincount(i[v > 0]).argmax())))
    cards = feature_cards(m, dic, rows, keys, decode=lambda t: f"<{t}>", n_contexts=3)
    for layer, f in keys:
        _, cache = m.run_with_cache(rows, names_filter=[f"blocks.{layer}.ln2.hook_normalized"])
        v, i = dic.encode(layer, cache[f"blocks.{layer}.ln2.hook_normalized"].reshape(-1, D))
        acts = (v * (i == f)).sum(1)
        top = acts.topk(3)
        got = [c["value"] for c in cards[(layer, f)]["contexts"]]
        torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), top.values[top.values > 0])
        first = cards[(layer, f)]["contexts"][0]
        r, p = divmod(int(top.indices[0]), 12)
        assert first["tokens"][first["at"]] == f"<{int(rows[r, p])}>"
        # logit effects: decoder rows summed over target layers, through ln_final, times W_U
        d = sum(dic.decoder_weight(layer, t)[f] for t in range(layer, 2))
        d = (d - d.mean()) * m.ln_final.w.detach()
        eff = d @ m.W_U.detach()
        assert cards[(layer, f)]["logits_up"][0][0] == f"<{int(eff.argmax())}>"
        assert cards[(layer, f)]["logits_down"][0][1] == pytest.approx(float(eff.min()), rel=1e-6)


def test_as_dictionary_rejects_what_it_cannot_read():
    from pyinterp.circuits import as_dictionary

    d = RandomDictionary(2, D)
    assert as_dictionary(d) is d
    with pytest.raises(TypeError, match="not a CircuitDictionary"):
        as_dictionary(object())
    with pytest.raises(TypeError, match="not a CircuitDictionary"):
        as_dictionary([])


def test_recomputed_patterns_match_stored(monkeypatch):
    from pyinterp.circuits import _patterns

    monkeypatch.setattr(_patterns, "_BLOCK_FLOATS", 40)  # blocks of 1-2 queries: the blocking is exercised
    m = tiny_model()
    t = tokens(T=17)
    dic = RandomDictionary(2, D, skip=True)
    a = LocalReplacement(m, dic, t, dtype=torch.float64, patterns="stored")
    b = LocalReplacement(m, dic, t, dtype=torch.float64, patterns="recompute")
    for l in range(2):
        torch.testing.assert_close(b.patterns.dense(l), a.patterns.dense(l), atol=1e-14, rtol=0)
    torch.testing.assert_close(b.forward(), m(t[None])[0].detach(), atol=1e-12, rtol=0)
    ga = attribute(m, dic, t, dtype=torch.float64, patterns="stored")
    gb = attribute(m, dic, t, dtype=torch.float64, patterns="recompute", batch_size=3)
    torch.testing.assert_close(ga.influence, gb.influence, atol=1e-13, rtol=1e-11)
    assert torch.equal(ga.edges, gb.edges)
    with pytest.raises(ValueError, match="patterns"):
        LocalReplacement(m, dic, t, patterns="cached")


def test_compare_ablations_fixed_norm_reading():
    """Features of the last layer at the last position reach the logits only directly: with the
    final norm's scale held, the real model's change equals the graph's prediction."""
    m = tiny_model()
    t = tokens()
    dic = RandomDictionary(2, D, skip=True)
    g = attribute(m, dic, t, dtype=torch.float64)
    last = [j for j in range(g.n_features) if int(g.feat_layer[j]) == 1 and int(g.feat_pos[j]) == t.numel() - 1]
    rows = compare_ablations(g, m, dic, [[j] for j in last[:3]] + [last[:3]])
    for r in rows:
        assert r["actual_fixed_norm"] == pytest.approx(r["predicted"], abs=1e-9)


def _randomised(mod, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in mod.named_parameters():
            p.copy_((torch.rand if name == "threshold" else torch.randn)(p.shape, generator=g) * 0.3)
        for name in ("input_scale", "output_scale"):
            b = getattr(mod, name)
            b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    return mod.eval()


@pytest.mark.parametrize("act", ["topk", "jumprelu", "relu"])
def test_pyinterp_clt_adapter(act):
    """pyinterp.sae.CrossLayerTranscoder through as_dictionary: the replacement model's
    reconstructions are the CLT's own outputs, and the graph matches the dense reference."""
    from pyinterp.sae import CrossLayerTranscoder

    m = tiny_model()
    mlp_in = [f"blocks.{i}.ln2.hook_normalized" for i in range(2)]
    mlp_out = [f"blocks.{i}.hook_mlp_out" for i in range(2)]
    kw = {"k": 4} if act == "topk" else {}
    clt = _randomised(CrossLayerTranscoder(2, D, 24, activation=act, hook_names=mlp_in, hook_names_out=mlp_out,
                                           dtype="float64", **kw))
    t = tokens()
    rm = LocalReplacement(m, clt, t, dtype=torch.float64)
    ref = clt([rm.inputs[0], rm.inputs[1]])
    for l in range(2):
        torch.testing.assert_close(rm.reconstruction(l), ref[l], atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(rm.forward(), m(t[None])[0].detach(), atol=1e-12, rtol=0)
    g = attribute(m, clt, t, dtype=torch.float64)
    d = dense_attribution(m, rm.dictionary, t)
    torch.testing.assert_close(g.influence, d["influence"], atol=1e-12, rtol=1e-10)


def test_pyinterp_transcoder_set_adapter():
    from pyinterp.sae import Transcoder

    m = tiny_model()
    tcs = [_randomised(Transcoder(D, 24, activation="topk", k=4, skip=True, dtype="float64",
                                  hook_name=f"blocks.{l}.ln2.hook_normalized",
                                  hook_name_out=f"blocks.{l}.hook_mlp_out"), seed=l) for l in range(2)]
    t = tokens()
    rm = LocalReplacement(m, tcs, t, dtype=torch.float64)
    for l in range(2):
        torch.testing.assert_close(rm.reconstruction(l), tcs[l](rm.inputs[l]), atol=1e-12, rtol=1e-10)
    g = attribute(m, tcs, t, dtype=torch.float64)
    d = dense_attribution(m, rm.dictionary, t)
    torch.testing.assert_close(g.influence, d["influence"], atol=1e-12, rtol=1e-10)
    with pytest.raises(ValueError, match="hook"):
        LocalReplacement(m, [Transcoder(D, 24, k=4, hook_name="blocks.0.hook_resid_post") for _ in range(2)], t)
