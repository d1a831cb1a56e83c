"""pyinterp.sae.dashboards as a library call: top activating contexts, density, histogram and
logit effects equal a brute-force computation over every position; HTML and the Neuronpedia
batch JSON SAEDashboard writes; pyinterp and SAELens SAEs; pyinterp, TransformerLens and
Hugging Face models."""
import json
import warnings

import pytest
import torch

from pyinterp.models import Transformer, TransformerConfig
from pyinterp.sae import TopKSAE, dashboards
from pyinterp.sae.feature_dashboards import fold_ln_final

HOOK = "blocks.0.hook_resid_post"
# NeuronpediaDashboardFeature.to_dict() keys in SAEDashboard (see docs/decisions/sae-dashboards.md)
FEATURE_KEYS = {"feature_index", "neuron_alignment_indices", "neuron_alignment_values",
                "neuron_alignment_l1", "correlated_neurons_indices", "correlated_neurons_l1",
                "correlated_neurons_pearson", "correlated_features_indices", "correlated_features_l1",
                "correlated_features_pearson", "neg_str", "neg_values", "pos_str", "pos_values",
                "frac_nonzero", "freq_hist_data_bar_values", "freq_hist_data_bar_heights",
                "logits_hist_data_bar_heights", "logits_hist_data_bar_values",
                "num_tokens_for_dashboard", "activations"}


def _setup():
    model = Transformer(TransformerConfig(n_layers=2, d_model=32, n_heads=4, d_vocab=40, n_ctx=16,
                                          act_fn="gelu", seed=0)).eval()
    sae = TopKSAE(32, 64, k=6, seed=0, hook_name=HOOK)
    sae.set_input_scale(2.0)
    tokens = torch.randint(0, 40, (12, 16), generator=torch.Generator().manual_seed(0))
    return model, sae, tokens


def test_matches_brute_force_and_writes_html_and_neuronpedia_json(tmp_path):
    model, sae, tokens = _setup()
    feats = [1, 5, 9, 33]
    d = dashboards(sae, model, tokens, feats, n_contexts=4, n_logits=5, batch_size=5,
                   vocab=[f"t{i}" for i in range(40)])
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
        v, i = sae.encode(cache[HOOK].reshape(-1, 32))
    dense = torch.zeros(v.shape[0], 64).scatter_add(1, i, v)[:, feats]
    W_U = model.W_U.detach()
    eff = fold_ln_final(model, sae.W_dec.detach()[feats] / 2.0) @ W_U
    for j, f in enumerate(d.features):
        assert f.index == feats[j] and f.n_tokens == 12 * 16
        assert f.frac_nonzero == pytest.approx(float((dense[:, j] != 0).float().mean()))
        top = dense[:, j].topk(4)
        got = [c[0] for c in f.contexts]
        torch.testing.assert_close(torch.tensor(got), top.values[top.values > -1][:len(got)])
        for (val, row, pos), row_vals in zip(f.contexts, f.context_values):
            assert dense[row * 16 + pos, j] == pytest.approx(val)
            torch.testing.assert_close(torch.tensor(row_vals), dense[row * 16:(row + 1) * 16, j])
        assert sum(f.hist_heights) == int((dense[:, j] != 0).sum())
        assert [t for t, _ in f.logits_pos] == eff[j].topk(5).indices.tolist()
        assert [t for t, _ in f.logits_neg] == (-eff[j]).topk(5).indices.tolist()
    paths = d.write(tmp_path, model_id="tiny", layer=0, sae_set="res-test")
    page = paths["html"].read_text()
    assert page.count("<h2 id=") == len(feats) and "<svg" in page
    data = json.loads(paths["json"].read_text())
    assert data["model_id"] == "tiny" and data["sae_set"] == "res-test" and set(data["settings"]) == {
        "n_batches_to_sample_from", "n_prompt_to_select"}
    for entry in data["features"]:
        assert FEATURE_KEYS <= set(entry)
        for act in entry["activations"]:
            assert set(act) >= {"bin_min", "bin_max", "bin_contains", "tokens", "values"}
            assert len(act["tokens"]) == len(act["values"]) == 16


def test_default_features_and_bad_arguments():
    model, sae, tokens = _setup()
    d = dashboards(sae, model, tokens, max_features=3)
    assert len(d.features) == 3 and all(f.frac_nonzero > 0 for f in d.features)
    with pytest.raises(ValueError, match="d_sae=64"):
        dashboards(sae, model, tokens, [64])
    with pytest.raises(ValueError, match=r"\(N, T\)"):
        dashboards(sae, model, tokens[0])


def test_sae_lens_sae_on_a_transformer_lens_model():
    sae_lens = pytest.importorskip("sae_lens", reason="needs sae-lens (pip install 'pyinterp[peers]')")
    tl = pytest.importorskip("transformer_lens", reason="needs transformer-lens")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = tl.HookedTransformer(tl.HookedTransformerConfig(
            n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=40, n_ctx=16, act_fn="gelu",
            normalization_type="LN", seed=0))
        sae = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(
            d_in=32, d_sae=64, k=5, metadata=sae_lens.saes.sae.SAEMetadata(hook_name=HOOK)))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.3)
    tokens = torch.randint(0, 40, (6, 16), generator=torch.Generator().manual_seed(1))
    d = dashboards(sae, model, tokens, [0, 3, 7])
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=[HOOK])
        dense = sae.encode(cache[HOOK]).reshape(-1, 64)[:, [0, 3, 7]]
    for j, f in enumerate(d.features):
        assert f.frac_nonzero == pytest.approx(float((dense[:, j] != 0).float().mean()))
        if f.contexts:
            assert f.max_value == pytest.approx(float(dense[:, j].max()), rel=1e-5)
        assert len(f.logits_pos) == 10  # residual-stream SAE: logit effects through W_U


def test_hugging_face_model():
    transformers = pytest.importorskip("transformers", reason="needs transformers")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=40,
                                                              n_positions=16)).eval()
    sae = TopKSAE(32, 64, k=4, seed=0, hook_name=HOOK)
    d = dashboards(sae, hf, torch.randint(0, 40, (4, 16)), [0, 1])
    assert len(d.features) == 2 and d.features[0].n_tokens == 64
