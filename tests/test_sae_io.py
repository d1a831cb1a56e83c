"""SAELens-layout save/load (both directions against real sae-lens objects), bad SAE
directories, and accelerate() of SAELens SAEs."""
import json
import warnings

import pytest
import torch

from pyinterp.sae import (
    BatchTopKSAE,
    CorruptFileError,
    JumpReLUSAE,
    ReLUSAE,
    TopKSAE,
    accelerate,
    load,
    restore,
)
from sae_testing import one_thread  # noqa: F401  (autouse: one torch thread)


@pytest.fixture(scope="module")
def sae_lens():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip("sae_lens", reason="sae-lens is not installed (pip install 'pyinterp[peers]')")


def _randomise(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * 0.4)
    return module


X = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(1))


def _ours(kind):
    if kind == "standard":
        s = ReLUSAE(8, 24, seed=0, hook_name="blocks.0.hook_resid_post")
    elif kind == "unit":
        s = ReLUSAE(8, 24, seed=0, decoder_norm="unit", l1_coefficient=2.0)
    elif kind == "topk":
        s = TopKSAE(8, 24, k=3, seed=0, aux_k=5)
    elif kind == "batchtopk":
        s = BatchTopKSAE(8, 24, k=3, seed=0)
    else:
        s = JumpReLUSAE(8, 24, seed=0)
    _randomise(s)
    s.set_input_scale(2.5)
    if kind == "batchtopk":
        s.threshold.fill_(0.3)
    return s.eval()


@pytest.mark.parametrize("kind", ["standard", "unit", "topk", "batchtopk", "jumprelu"])
def test_save_load_round_trip(tmp_path, kind):
    sae = _ours(kind)
    sae.save(tmp_path / "d")
    cfg = json.loads((tmp_path / "d" / "cfg.json").read_text())
    for field in ("architecture", "d_in", "d_sae", "apply_b_dec_to_input", "normalize_activations",
                  "dtype", "device", "hook_name", "metadata"):
        assert field in cfg
    back = load(tmp_path / "d")
    assert type(back) is type(sae) and back.cfg == sae.cfg
    assert float(back.input_scale) == pytest.approx(2.5)
    torch.testing.assert_close(back(X), sae(X), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["standard", "unit", "topk", "batchtopk", "jumprelu"])
def test_our_directory_loads_in_sae_lens(tmp_path, sae_lens, kind):
    sae = _ours(kind)
    sae.save(tmp_path / "d")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "d"))
    torch.testing.assert_close(theirs(X), sae(X), atol=1e-5, rtol=1e-5)
    expected_arch = "jumprelu" if kind == "batchtopk" else sae.cfg.architecture
    assert theirs.cfg.architecture() == expected_arch
    if kind == "topk":
        assert theirs.cfg.k == 3


def _sae_lens_objects(sae_lens):
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig

    L = sae_lens
    return {
        "standard": L.StandardSAE(L.StandardSAEConfig(d_in=8, d_sae=24)),
        "topk": L.TopKSAE(L.TopKSAEConfig(d_in=8, d_sae=24, k=4)),
        "topk_rescale": L.TopKSAE(L.TopKSAEConfig(d_in=8, d_sae=24, k=4, rescale_acts_by_decoder_norm=True)),
        "topk_no_bdec": L.TopKSAE(L.TopKSAEConfig(d_in=8, d_sae=24, k=4, apply_b_dec_to_input=False)),
        "jumprelu": L.JumpReLUSAE(L.JumpReLUSAEConfig(d_in=8, d_sae=24)),
        "norm_rescale": L.StandardSAE(L.StandardSAEConfig(d_in=8, d_sae=24, normalize_activations="constant_norm_rescale")),
        "layer_norm": L.StandardSAE(L.StandardSAEConfig(d_in=8, d_sae=24, normalize_activations="layer_norm")),
        "batchtopk_train": BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=8, d_sae=24, k=3)),
    }


def test_sae_lens_directories_load_with_the_same_reconstructions(tmp_path, sae_lens):
    for name, obj in _sae_lens_objects(sae_lens).items():
        _randomise(obj, seed=3)
        d = tmp_path / name
        if name == "batchtopk_train":
            obj.topk_threshold = torch.tensor(0.2, dtype=torch.float64)
            obj.save_model(str(d))                 # training layout: architecture "batchtopk"
            obj.save_inference_model(str(tmp_path / "btk_inf"))   # jumprelu + metadata
            ref = sae_lens.SAE.load_from_disk(str(tmp_path / "btk_inf"))
            for path in (d, tmp_path / "btk_inf"):
                ours = load(path)
                assert isinstance(ours, BatchTopKSAE) and not ours.training
                torch.testing.assert_close(ours(X), ref(X), atol=1e-5, rtol=1e-5, msg=str(path))
            continue
        obj.save_model(str(d))
        ours = load(d)
        torch.testing.assert_close(ours(X), obj(X), atol=1e-5, rtol=1e-5, msg=name)
        if name.startswith("topk"):
            v, i = ours.encode(X)
            dense = torch.zeros(3, 5, 24).scatter(-1, i, v)
            torch.testing.assert_close(dense, obj.encode(X), atol=1e-5, rtol=1e-5, msg=name)


def _as_written_by_sae_lens(d):
    """Drop what pyinterp adds to the weights' metadata (digests), as SAELens writes them."""
    from safetensors.torch import load_file, save_file

    f = str(d / "sae_weights.safetensors")
    save_file(load_file(f), f)


def test_legacy_sae_lens_config(tmp_path):
    sae = _ours("topk")
    sae.set_input_scale(1.0)
    sae.save(tmp_path / "d")
    _as_written_by_sae_lens(tmp_path / "d")
    cfg = {"d_in": 8, "d_sae": 24, "dtype": "torch.float32", "device": "cpu",
           "hook_point": "blocks.3.hook_resid_pre", "activation_fn_str": "topk",
           "activation_fn_kwargs": {"k": 3}, "normalize_activations": False,
           "apply_b_dec_to_input": True}
    (tmp_path / "d" / "cfg.json").write_text(json.dumps(cfg))
    old = load(tmp_path / "d")
    assert isinstance(old, TopKSAE) and old.cfg.k == 3
    assert old.hook_name == "blocks.3.hook_resid_pre"
    torch.testing.assert_close(old(X), sae(X), atol=1e-5, rtol=1e-5)


def test_bad_sae_directories_name_the_file(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist.*from_pretrained"):
        load(tmp_path / "nope")
    d = tmp_path / "d"
    _ours("topk").save(d)
    _as_written_by_sae_lens(d)  # cfg.json edits below are not caught by a digest
    good_cfg = (d / "cfg.json").read_text()
    good_w = (d / "sae_weights.safetensors").read_bytes()
    (d / "cfg.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"cfg\.json does not exist"):
        load(d)
    (d / "cfg.json").write_text("{")
    with pytest.raises(CorruptFileError, match=r"cfg\.json is not valid JSON"):
        load(d)
    cfg = json.loads(good_cfg)
    del cfg["d_in"]
    cfg["metadata"].pop("pyinterp")
    (d / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CorruptFileError, match=r"cfg\.json is missing the field 'd_in'"):
        load(d)
    cfg = json.loads(good_cfg)
    cfg["architecture"] = "gated"
    (d / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="architecture 'gated' is not supported"):
        load(d)
    cfg = json.loads(good_cfg)
    cfg["metadata"].pop("pyinterp")
    del cfg["k"]
    (d / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CorruptFileError, match=r"cfg\.json is missing the field 'k'"):
        load(d)
    (d / "cfg.json").write_text(good_cfg)
    (d / "sae_weights.safetensors").unlink()
    with pytest.raises(CorruptFileError, match=r"sae_weights\.safetensors is missing"):
        load(d)
    (d / "sae_weights.safetensors").write_bytes(good_w[: len(good_w) // 3])
    with pytest.raises(CorruptFileError, match=r"sae_weights\.safetensors is truncated or corrupt"):
        load(d)
    from safetensors.torch import save_file

    w = {"W_enc": torch.zeros(8, 24), "b_enc": torch.zeros(24), "b_dec": torch.zeros(8)}
    save_file(w, str(d / "sae_weights.safetensors"))
    with pytest.raises(CorruptFileError, match=r"missing the tensors \['W_dec'\]"):
        load(d)
    w["W_dec"] = torch.zeros(24, 9)
    save_file(w, str(d / "sae_weights.safetensors"))
    with pytest.raises(CorruptFileError, match=r"W_dec has shape \(24, 9\).*needs \(24, 8\)"):
        load(d)
    # loading never unpickles
    (d / "sae_weights.safetensors").write_bytes(good_w)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    load(d)


def test_accelerate_matches_sae_lens(tmp_path, sae_lens):
    for name, obj in _sae_lens_objects(sae_lens).items():
        _randomise(obj, seed=4)
        ref_out, ref_enc = obj(X), obj.encode(X)
        ref_dec = obj.decode(ref_enc)
        assert accelerate(obj) is obj
        torch.testing.assert_close(obj(X), ref_out, atol=1e-5, rtol=1e-5, msg=name)
        enc = obj.encode(X)
        torch.testing.assert_close(enc, ref_enc, atol=1e-5, rtol=1e-5, msg=name)
        torch.testing.assert_close(obj.decode(enc), ref_dec, atol=1e-5, rtol=1e-5, msg=name)
        if name in ("topk", "jumprelu", "standard"):
            v, i = obj.encode_sparse(X)
            torch.testing.assert_close(torch.zeros(3, 5, 24).scatter_add(-1, i, v), ref_enc,
                                       atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(obj.decode_sparse(v, i), ref_out, atol=1e-5, rtol=1e-5)
        restore(obj)
        assert "forward" not in obj.__dict__
        torch.testing.assert_close(obj(X), ref_out)


def test_accelerate_defers_to_sae_lens_when_hooks_are_attached(sae_lens):
    obj = _randomise(sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=8, d_sae=24, k=4)))
    accelerate(obj)
    handle = obj.hook_sae_acts_post.register_forward_hook(lambda m, i, o: o * 2)
    try:
        restore_out = obj(X)
        doubled = (obj.encode(X))   # hook active: SAELens's own path, doubled activations
    finally:
        handle.remove()
    plain = obj.encode(X)
    torch.testing.assert_close(doubled, plain * 2)
    assert not torch.allclose(restore_out, obj(X))


def test_accelerate_rejects_other_objects():
    with pytest.raises(TypeError, match="SAELens SAE object"):
        accelerate(torch.nn.Linear(2, 2))


def test_sparsity_file(tmp_path):
    from pyinterp.sae.io import load_sparsity

    sae = _ours("topk")
    dens = torch.linspace(0, 0.5, 24)
    sae.save(tmp_path / "d", feature_density=dens)
    got = load_sparsity(tmp_path / "d")
    torch.testing.assert_close(got, dens.double().clamp_min(1e-10).log10().float())
    assert load_sparsity(tmp_path / "nothing") is None
    with pytest.raises(ValueError, match=r"feature_density must have shape \(24,\)"):
        sae.save(tmp_path / "e", feature_density=torch.ones(3))
    assert not (tmp_path / "e").exists()  # nothing written for a bad call
