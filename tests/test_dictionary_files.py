"""Files of the dictionary zoo, in the peers' real layouts: transcoders in SAELens's layout
(read back by SAELens 6 itself, and SAELens-written files read by pyinterp), JumpReLU and
Matryoshka SAEs through SAELens, crosscoders / CLTs in pyinterp's documented layout, sparsify
checkpoint directories and Gemma Scope parameter files (npz / safetensors) built here in their
published layouts and compared with independent forward passes (sparsify's and Gemma Scope's
maths written out, SAELens's modules)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pyinterp._files import CorruptFileError
from pyinterp.sae import (
    Crosscoder,
    CrossLayerTranscoder,
    JumpReLUSAE,
    MatryoshkaBatchTopKSAE,
    MatryoshkaTopKSAE,
    Transcoder,
    load,
    load_gemma_scope,
    load_sparsify,
)
from sae_testing import one_thread  # noqa: F401  (autouse: one torch thread)

sae_lens = pytest.importorskip("sae_lens", reason="SAELens is the peer these layouts are for")


def _randomise(mod, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in mod.named_parameters():
            scale = 0.2 if name == "threshold" else 0.3
            p.copy_((torch.rand if name == "threshold" else torch.randn)(p.shape, generator=g) * scale)
        for name in ("input_scale", "output_scale"):
            if hasattr(mod, name):
                getattr(mod, name).copy_(torch.rand(getattr(mod, name).shape, generator=g) + 0.5)
    return mod


TC_KINDS = [("relu", False), ("relu", True), ("jumprelu", False), ("jumprelu", True),
            ("batchtopk", False), ("topk", True)]


@pytest.mark.parametrize("act,skip", TC_KINDS)
def test_transcoder_round_trip_and_saelens_reads_it(tmp_path, act, skip):
    tc = _randomise(Transcoder(8, 24, activation=act, d_out=6, skip=skip, seed=0,
                               hook_name="blocks.0.ln2.hook_normalized",
                               hook_name_out="blocks.0.hook_mlp_out",
                               **({"k": 3} if act in ("topk", "batchtopk") else {})))
    if act == "batchtopk":
        tc.threshold.fill_(0.05)
    tc.eval()
    x = torch.randn(10, 8)
    tc.save(tmp_path / "tc")
    back = load(tmp_path / "tc")
    assert isinstance(back, Transcoder) and back.cfg.skip == skip and back.activation == act
    assert back.hook_name_out == "blocks.0.hook_mlp_out"
    torch.testing.assert_close(back(x), tc(x), atol=1e-5, rtol=1e-5)
    if act == "topk":  # SAELens has no TopK transcoder: a pyinterp-only architecture name
        assert json.loads((tmp_path / "tc" / "cfg.json").read_text())["architecture"] == "topk_transcoder"
        return
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "tc"))
    expect = {("relu", False): "Transcoder", ("relu", True): "SkipTranscoder",
              ("jumprelu", False): "JumpReLUTranscoder", ("jumprelu", True): "JumpReLUSkipTranscoder",
              ("batchtopk", False): "JumpReLUTranscoder"}[(act, skip)]
    assert type(theirs).__name__ == expect
    torch.testing.assert_close(theirs(x), tc(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls", ["Transcoder", "SkipTranscoder", "JumpReLUTranscoder",
                                 "JumpReLUSkipTranscoder"])
def test_saelens_written_transcoders_load(tmp_path, cls):
    from sae_lens.saes import transcoder as T

    cfg_cls = getattr(T, cls + "Config")
    theirs = getattr(T, cls)(cfg_cls(d_in=8, d_sae=20, d_out=5, apply_b_dec_to_input=False))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            p.copy_(torch.rand(p.shape, generator=g) * 0.2 if name == "threshold"
                    else torch.randn(p.shape, generator=g) * 0.3)
    theirs.cfg.metadata.hook_name = "h_in"
    theirs.save_model(str(tmp_path / "t"))
    ours = load(tmp_path / "t")
    x = torch.randn(7, 8)
    assert ours.hook_name == "h_in" and ours.cfg.skip == ("Skip" in cls)
    torch.testing.assert_close(ours(x), theirs(x).detach(), atol=1e-5, rtol=1e-5)


def test_trained_jumprelu_and_matryoshka_saes_through_saelens(tmp_path):
    x = torch.randn(9, 8)
    j = _randomise(JumpReLUSAE(8, 24, seed=0)).eval()
    j.save(tmp_path / "j")
    torch.testing.assert_close(sae_lens.SAE.load_from_disk(str(tmp_path / "j"))(x), j(x),
                               atol=1e-5, rtol=1e-5)
    back = load(tmp_path / "j")
    torch.testing.assert_close(back.threshold, j.threshold)
    for cls in (MatryoshkaTopKSAE, MatryoshkaBatchTopKSAE):
        m = _randomise(cls(8, 24, k=3, matryoshka_widths=[4, 12, 24], seed=0))
        if cls is MatryoshkaBatchTopKSAE:
            m.threshold.fill_(0.1)
        m.eval().save(tmp_path / cls.__name__)
        theirs = sae_lens.SAE.load_from_disk(str(tmp_path / cls.__name__))
        torch.testing.assert_close(theirs(x), m(x), atol=1e-5, rtol=1e-5)
        back = load(tmp_path / cls.__name__)
        assert type(back) is cls and back.cfg.matryoshka_widths == [4, 12, 24]
        torch.testing.assert_close(back(x), m(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("act", ["topk", "jumprelu", "batchtopk"])
def test_clt_and_crosscoder_files(tmp_path, act):
    kw = {"k": 2} if act != "jumprelu" else {}
    clt = _randomise(CrossLayerTranscoder(3, 6, 8, activation=act, d_out=5, seed=0,
                                          hook_names=["a0", "a1", "a2"],
                                          hook_names_out=["o0", "o1", "o2"], **kw)).eval()
    cc = _randomise(Crosscoder(2, 6, 10, activation=act, seed=0, **kw)).eval()
    xs = [torch.randn(4, 6) for _ in range(3)]
    for d, inp in ((clt, xs), (cc, xs[:2])):
        d.save(tmp_path / d.architecture)
        back = load(tmp_path / d.architecture)
        assert type(back) is type(d) and back.cfg == d.cfg
        for k, v in d.state_dict().items():
            assert torch.equal(back.state_dict()[k], v), k
        torch.testing.assert_close(back(inp), d(inp))
    # a config that does not match its weights is refused, naming the file
    cfg = json.loads((tmp_path / "clt" / "cfg.json").read_text())
    cfg["config"]["d_sae"] = 9
    (tmp_path / "clt" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(CorruptFileError, match="weights.safetensors"):
        load(tmp_path / "clt")


def test_crosscoder_file_in_the_documented_layout_loads(tmp_path):
    """A crosscoder directory written by hand as docs/dictionaries.md ("Files") documents it
    (and as every pyinterp version has written it): one stacked W_dec (L, d_sae, d_in), read
    into the module's per-layer decoders; its forward is the documented maths."""
    import hashlib

    from pyinterp.sae.config import SAEConfig

    L, d, m, k = 3, 5, 12, 2
    g = torch.Generator().manual_seed(3)
    t = {"W_enc": torch.randn(L, d, m, generator=g), "b_enc": torch.randn(m, generator=g) * 0.1,
         "W_dec": torch.randn(L, m, d, generator=g), "b_dec": torch.randn(L, d, generator=g),
         "input_scale": torch.rand(L, generator=g) + 0.5}
    conf = SAEConfig(architecture="crosscoder", d_in=d, d_sae=m, n_layers=L, activation="topk",
                     k=k, apply_b_dec_to_input=False).to_dict()
    cfg = {"format": "pyinterp-dictionary-1", "architecture": "crosscoder", "config": conf,
           "tensors": {n: list(v.shape) for n, v in t.items()}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    digest = hashlib.sha256((tmp_path / "cfg.json").read_bytes()).hexdigest()
    save_file(t, str(tmp_path / "weights.safetensors"), metadata={"pyinterp.cfg_sha256": digest})
    cc = load(tmp_path)
    assert isinstance(cc, Crosscoder) and len(cc.W_dec) == L
    for l in range(L):
        assert torch.equal(cc.W_dec[l].detach(), t["W_dec"][l])
    xs = [torch.randn(7, d, generator=g) for _ in range(L)]
    xn = [x * t["input_scale"][l] for l, x in enumerate(xs)]
    pre = sum(xn[l] @ t["W_enc"][l] for l in range(L)) + t["b_enc"]
    v, i = torch.topk(pre, k, dim=-1)
    code = torch.zeros_like(pre).scatter(-1, i, v.relu())
    want = torch.stack([(code @ t["W_dec"][l] + t["b_dec"][l]) / t["input_scale"][l]
                        for l in range(L)])
    with torch.no_grad():
        torch.testing.assert_close(cc(xs), want, atol=1e-5, rtol=1e-5)
    assert torch.equal(cc.state_dict()["W_dec"], t["W_dec"])
    with pytest.raises(RuntimeError, match=r"size mismatch for W_dec: .*\(3, 12, 5\), the "
                       r"crosscoder needs \(2, 12, 5\)"):
        Crosscoder(2, d, m, activation="topk", k=k).load_state_dict(
            {n: v for n, v in cc.state_dict().items()})
    cc.save(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "cfg.json").read_text())["tensors"] == cfg["tensors"]


# ------------------------------------------------------------------------------------------
# sparsify


def _sparsify_dir(path, *, d_in=8, m=24, k=3, transcode=False, skip=False, seed=0,
                  dtype=torch.float32):
    """A checkpoint in sparsify's layout: SparseCoderConfig.to_dict() + d_in, and the
    state dict of SparseCoder (encoder = nn.Linear(d_in, m), W_dec, b_dec, W_skip)."""
    g = torch.Generator().manual_seed(seed)
    t = {"encoder.weight": torch.randn(m, d_in, generator=g) * 0.3,
         "encoder.bias": torch.randn(m, generator=g) * 0.1,
         "W_dec": torch.randn(m, d_in, generator=g) * 0.3,
         "b_dec": torch.randn(d_in, generator=g) * 0.1}
    if skip:
        t["W_skip"] = torch.randn(d_in, d_in, generator=g) * 0.1
    path.mkdir(parents=True)
    save_file({n: v.to(dtype) for n, v in t.items()}, str(path / "sae.safetensors"))
    cfg = {"activation": "topk", "expansion_factor": m // d_in, "normalize_decoder": True,
           "num_latents": m, "k": k, "multi_topk": False, "skip_connection": skip,
           "transcode": transcode, "d_in": d_in}
    (path / "cfg.json").write_text(json.dumps(cfg))
    return {n: v.to(dtype).float() for n, v in t.items()}


def _sparsify_forward(t, x, k, transcode):
    """sparsify's SparseCoder.encode + decode, written out: TopK of ReLU(x' W^T + b)."""
    xin = x if transcode else x - t["b_dec"]
    pre = torch.relu(xin @ t["encoder.weight"].T + t["encoder.bias"])
    v, i = pre.topk(k)
    y = torch.zeros(x.shape[0], t["W_dec"].shape[0]).scatter(1, i, v) @ t["W_dec"] + t["b_dec"]
    if "W_skip" in t:
        y = y + x @ t["W_skip"].T
    return y


@pytest.mark.parametrize("transcode,skip", [(False, False), (True, False), (True, True)])
def test_sparsify_checkpoints(tmp_path, transcode, skip):
    t = _sparsify_dir(tmp_path / "layers.3", transcode=transcode, skip=skip)
    x = torch.randn(12, 8)
    d = load_sparsify(tmp_path / "layers.3", hook_name="blocks.3.hook_resid_post")
    assert isinstance(d, Transcoder) == transcode
    torch.testing.assert_close(d(x), _sparsify_forward(t, x, 3, transcode), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(load(tmp_path / "layers.3")(x), d(x))  # autodetected


def test_sparsify_agrees_with_saelens_loader_where_they_agree(tmp_path):
    """SAELens's sparsify loader centres the input by ``not normalize_decoder``; sparsify's code
    centres every SAE. With normalize_decoder=False the two readings of the encoder coincide.
    (SAELens's loader also returns sparsify's W_dec transposed, (d_in, m): it expects an older
    layout; sparsify's SparseCoder stores W_dec as (num_latents, d_in), as read here.)"""
    from sae_lens.loading.pretrained_sae_loaders import sparsify_disk_loader

    t = _sparsify_dir(tmp_path / "layers.1")
    cfg = json.loads((tmp_path / "layers.1" / "cfg.json").read_text())
    cfg["normalize_decoder"] = False
    (tmp_path / "layers.1" / "cfg.json").write_text(json.dumps(cfg))
    cfg_dict, state = sparsify_disk_loader(tmp_path / "layers.1", cfg_overrides={"dtype": "float32"})
    assert cfg_dict["apply_b_dec_to_input"] is True
    x = torch.randn(6, 8)
    W_enc, W_dec = state["W_enc"].float(), state["W_dec"].float().T
    assert torch.equal(W_dec, t["W_dec"])
    pre = (x - state["b_dec"]) @ W_enc + state["b_enc"]
    v, i = pre.relu().topk(3)
    theirs = torch.zeros(6, 24).scatter(1, i, v) @ W_dec + state["b_dec"]
    torch.testing.assert_close(load_sparsify(tmp_path / "layers.1")(x), theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(theirs, _sparsify_forward(t, x, 3, False), atol=1e-5, rtol=1e-5)


def test_sparsify_bad_files_name_the_problem(tmp_path):
    _sparsify_dir(tmp_path / "s")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(dict(cfg, activation="groupmax")))
    with pytest.raises(ValueError, match="groupmax"):
        load_sparsify(tmp_path / "s")
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(dict(cfg, num_latents=30)))
    with pytest.raises(CorruptFileError, match="encoder.weight"):
        load_sparsify(tmp_path / "s")


# ------------------------------------------------------------------------------------------
# Gemma Scope


def _gemma_arrays(d_in=8, d_sae=24, d_out=8, seed=0, affine=False):
    r = np.random.default_rng(seed)
    a = {"W_enc": r.normal(0, 0.3, (d_in, d_sae)), "W_dec": r.normal(0, 0.3, (d_sae, d_out)),
         "b_enc": r.normal(0, 0.1, d_sae), "b_dec": r.normal(0, 0.1, d_out),
         "threshold": r.uniform(0, 0.3, d_sae)}
    if affine:
        a["affine_skip_connection"] = r.normal(0, 0.1, (d_in, d_out))
    return {k: v.astype(np.float32) for k, v in a.items()}


def _gemma_forward(a, x):
    """Gemma Scope's JumpReLU (its tutorial's maths): ReLU(pre) [pre > threshold], no centring."""
    t = {k: torch.from_numpy(v) for k, v in a.items()}
    pre = x @ t["W_enc"] + t["b_enc"]
    y = (pre.relu() * (pre > t["threshold"])) @ t["W_dec"] + t["b_dec"]
    if "affine_skip_connection" in t:
        y = y + x @ t["affine_skip_connection"]
    return y


def test_gemma_scope_npz_sae_matches_saelens_jumprelu(tmp_path):
    a = _gemma_arrays()
    folder = tmp_path / "layer_3" / "width_16k" / "average_l0_71"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **a)
    x = torch.randn(10, 8)
    ours = load_gemma_scope(folder, hook_name="blocks.3.hook_resid_post")
    assert isinstance(ours, JumpReLUSAE) and not ours.cfg.apply_b_dec_to_input
    torch.testing.assert_close(ours(x), _gemma_forward(a, x), atol=1e-5, rtol=1e-5)
    # SAELens's Gemma Scope loader: the npz keys as tensors into a JumpReLUSAE without centring
    theirs = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=8, d_sae=24,
                                                             apply_b_dec_to_input=False))
    theirs.load_state_dict({k: torch.tensor(v) for k, v in a.items()})
    torch.testing.assert_close(ours(x), theirs(x).detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(load(folder)(x), ours(x))  # autodetected by pyinterp.sae.load


def test_gemma_scope_2_affine_transcoder_safetensors(tmp_path):
    a = _gemma_arrays(d_out=6, affine=True)
    save_file({k.lower(): torch.from_numpy(v) for k, v in a.items()}, str(tmp_path / "params.safetensors"))
    x = torch.randn(5, 8)
    tc = load_gemma_scope(tmp_path, hook_name="blocks.2.ln2.hook_normalized",
                          hook_name_out="blocks.2.hook_mlp_out")
    assert isinstance(tc, Transcoder) and tc.cfg.skip and tc.activation == "jumprelu"
    torch.testing.assert_close(tc(x), _gemma_forward(a, x), atol=1e-5, rtol=1e-5)
    from sae_lens.saes.transcoder import JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig

    theirs = JumpReLUSkipTranscoder(JumpReLUSkipTranscoderConfig(
        d_in=8, d_sae=24, d_out=6, apply_b_dec_to_input=False))
    sd = {"W_enc": a["W_enc"], "W_dec": a["W_dec"], "b_enc": a["b_enc"], "b_dec": a["b_dec"],
          "threshold": a["threshold"], "W_skip": a["affine_skip_connection"].T}  # SAELens's gemma 3 loader
    theirs.load_state_dict({k: torch.tensor(np.ascontiguousarray(v)) for k, v in sd.items()})
    torch.testing.assert_close(tc(x), theirs(x).detach(), atol=1e-5, rtol=1e-5)


def test_gemma_scope_never_unpickles(tmp_path):
    a = _gemma_arrays()
    a["threshold"] = np.array([object()] * 24, dtype=object)
    np.savez(tmp_path / "params.npz", **a)
    with pytest.raises(CorruptFileError, match="params.npz"):
        load_gemma_scope(tmp_path)
