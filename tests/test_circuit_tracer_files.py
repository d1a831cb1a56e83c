"""circuit-tracer's transcoder files (pyinterp.sae.load_circuit_tracer).

Files are written in circuit-tracer 0.5.0's layout from random tensors with safetensors; the
expected outputs are computed here from those raw tensors with circuit-tracer's forward maths
(pre = x W_enc^T + b_enc, ReLU or pre [pre > threshold], decode per target layer), never with
pyinterp. When circuit-tracer itself is importable, its own writers and classes are checked too.
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from circuits_testing import tiny_model, tokens
from pyinterp.circuits import LocalReplacement, as_dictionary, attribute
from pyinterp.circuits.reference import dense_attribution
from pyinterp.sae import CorruptFileError, load, load_circuit_tracer

DTYPES = [torch.float32, torch.float64]


def _r(g, *shape, scale=1.0):
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def write_clt(path, L=3, d=12, m=20, jump=False, seed=0, dtype=torch.float32):
    """circuit-tracer's CLT directory: W_enc_{l}.safetensors (W_enc_l (m, d), b_enc_l, b_dec_l,
    threshold_l) and W_dec_{l}.safetensors (W_dec_l (m, L - l, d)). Returns the raw tensors."""
    g = torch.Generator().manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    raw = []
    for l in range(L):
        t = {"W_enc": _r(g, m, d, scale=d ** -0.5), "b_enc": _r(g, m, scale=0.2),
             "b_dec": _r(g, d, scale=0.1), "W_dec": _r(g, m, L - l, d, scale=0.3)}
        if jump:
            t["threshold"] = torch.rand(m, generator=g, dtype=torch.float64) * 0.4
        enc = {f"{k}_{l}": t[k].to(dtype) for k in ("W_enc", "b_enc", "b_dec", "threshold") if k in t}
        save_file(enc, str(path / f"W_enc_{l}.safetensors"))
        save_file({f"W_dec_{l}": t["W_dec"].to(dtype)}, str(path / f"W_dec_{l}.safetensors"))
        raw.append({k: v.to(dtype).double() for k, v in t.items()})
    return raw


def write_set(path, L=2, d=12, m=20, jump=False, skip=False, seed=0, old_decoder=False,
              dtype=torch.float32):
    """circuit-tracer's per-layer files layer_{l}.safetensors: W_enc (m, d), W_dec (m, d)
    ((d, m) before 0.5 with ``old_decoder``), b_enc, b_dec, W_skip (d, d),
    activation_function.threshold (m,)."""
    g = torch.Generator().manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    raw = []
    for l in range(L):
        t = {"W_enc": _r(g, m, d, scale=d ** -0.5), "W_dec": _r(g, m, d, scale=0.3),
             "b_enc": _r(g, m, scale=0.2), "b_dec": _r(g, d, scale=0.1)}
        if skip:
            t["W_skip"] = _r(g, d, d, scale=0.1)
        if jump:
            t["activation_function.threshold"] = torch.rand(m, generator=g, dtype=torch.float64) * 0.4
        disk = {k: v.to(dtype) for k, v in t.items()}
        if old_decoder:
            disk["W_dec"] = disk["W_dec"].T.contiguous()
        save_file(disk, str(path / f"layer_{l}.safetensors"))
        raw.append({k: v.to(dtype).double() for k, v in t.items()})
    return raw


def write_config(path, kind, hooks=("ln2.hook_normalized", "hook_mlp_out"), extra=""):
    (path / "config.yaml").write_text(f"model_kind: {kind}\nfeature_input_hook: {hooks[0]}\n"
                                      f"feature_output_hook: {hooks[1]}\n{extra}")


# ----------------------------------------------------------------------------- references
def ref_codes(t, x, thr_key):
    pre = x @ t["W_enc"].T + t["b_enc"]
    return pre * (pre > t[thr_key]) if thr_key in t else pre.clamp_min(0)


def ref_clt(raw, xs):
    """circuit-tracer's CLT maths: y_j = sum_{l <= j} f_l W_dec_l[:, j - l] + b_dec_j."""
    L = len(raw)
    f = [ref_codes(raw[l], xs[l], "threshold") for l in range(L)]
    ys = [sum(f[l] @ raw[l]["W_dec"][:, j - l] for l in range(j + 1)) + raw[j]["b_dec"]
          for j in range(L)]
    return f, torch.stack(ys)


def ref_set(t, x):
    f = ref_codes(t, x, "activation_function.threshold")
    y = f @ t["W_dec"] + t["b_dec"]
    return f, y + x @ t["W_skip"].T if "W_skip" in t else y


def dense(values, indices, m):
    return torch.zeros(*values.shape[:-1], m, dtype=torch.float64).scatter_add_(
        -1, indices, values.double())


def tol(dtype):
    return dict(atol=1e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-12, rtol=1e-10)


# ----------------------------------------------------------------------------- CLTs
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("jump", [False, True])
def test_clt_matches_circuit_tracer_maths(tmp_path, dtype, jump):
    L, d, m = 3, 12, 20
    raw = write_clt(tmp_path / "clt", L, d, m, jump=jump, dtype=dtype)
    write_config(tmp_path / "clt", "cross_layer_transcoder")
    clt = load_circuit_tracer(tmp_path / "clt", dtype=dtype)
    assert (clt.n_layers, clt.d_in, clt.d_sae, clt.W_enc.dtype) == (L, d, m, dtype)
    assert clt.activation == ("jumprelu" if jump else "relu")
    assert clt.cfg.hook_names[1] == "blocks.1.ln2.hook_normalized"
    assert clt.cfg.hook_names_out[2] == "blocks.2.hook_mlp_out"
    g = torch.Generator().manual_seed(5)
    xs = [_r(g, 7, d) for _ in range(L)]
    f_ref, y_ref = ref_clt(raw, xs)
    for l in range(L):
        v, i = clt.encode_layer(l, xs[l].to(dtype))
        torch.testing.assert_close(dense(v, i, m), f_ref[l], **tol(dtype))
    torch.testing.assert_close(clt([x.to(dtype) for x in xs]).double(), y_ref, **tol(dtype))
    v, i = clt.encode([x.to(dtype) for x in xs])
    torch.testing.assert_close(clt.decode(v, i).double(), y_ref, **tol(dtype))


def test_clt_without_config_uses_circuit_tracer_default_hooks(tmp_path):
    write_clt(tmp_path, L=2)
    clt = load_circuit_tracer(tmp_path)
    assert clt.cfg.hook_names == ["blocks.0.hook_resid_mid", "blocks.1.hook_resid_mid"]
    assert clt.cfg.hook_names_out == ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"]
    assert clt.W_enc.dtype == torch.float32
    assert load_circuit_tracer(tmp_path, input_hook="ln2.hook_normalized").cfg.hook_names[0] \
        == "blocks.0.ln2.hook_normalized"


def test_clt_bad_files(tmp_path):
    def fresh(name, **kw):
        p = tmp_path / name
        write_clt(p, L=3, **kw)
        return p

    p = fresh("no_dec")
    (p / "W_dec_1.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="W_dec_1"):
        load_circuit_tracer(p)
    p = fresh("gap")
    (p / "W_enc_1.safetensors").unlink()
    with pytest.raises(CorruptFileError, match=r"missing layers \[1\]"):
        load_circuit_tracer(p)
    p = fresh("dec_shape")
    save_file({"W_dec_1": torch.zeros(20, 3, 12)}, str(p / "W_dec_1.safetensors"))
    with pytest.raises(CorruptFileError, match=r"W_dec_1.*\(20, 3, 12\).*\(20, 2, 12\)"):
        load_circuit_tracer(p)
    p = fresh("d_sae")  # layer 2's encoder has another width
    save_file({"W_enc_2": torch.zeros(21, 12), "b_enc_2": torch.zeros(21), "b_dec_2": torch.zeros(12)},
              str(p / "W_enc_2.safetensors"))
    with pytest.raises(CorruptFileError, match=r"W_enc_2.safetensors: tensor W_enc_2 has shape \(21, 12\)"):
        load_circuit_tracer(p)
    p = fresh("thr", jump=True)  # thresholds on layer 0 only
    save_file({"W_enc_1": torch.zeros(20, 12), "b_enc_1": torch.zeros(20), "b_dec_1": torch.zeros(12)},
              str(p / "W_enc_1.safetensors"))
    with pytest.raises(CorruptFileError, match="missing the tensor 'threshold_1'"):
        load_circuit_tracer(p)
    p = fresh("int")
    save_file({"W_dec_0": torch.zeros(20, 3, 12, dtype=torch.int32)}, str(p / "W_dec_0.safetensors"))
    with pytest.raises(CorruptFileError, match="float dtype"):
        load_circuit_tracer(p)
    p = fresh("trunc")
    data = (p / "W_enc_0.safetensors").read_bytes()
    (p / "W_enc_0.safetensors").write_bytes(data[:-8])
    with pytest.raises(CorruptFileError, match="truncated"):
        load_circuit_tracer(p)
    with pytest.raises(ValueError, match="load_circuit_tracer"):
        load(fresh("via_load"))
    p = fresh("kind")
    write_config(p, "crosscoder")
    with pytest.raises(CorruptFileError, match="model_kind"):
        load_circuit_tracer(p)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_circuit_tracer(tmp_path / "nothing")


# ----------------------------------------------------------------------------- transcoder sets
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("jump,skip,old", [(False, False, False), (True, True, False),
                                           (False, True, True)])
def test_transcoder_set_matches_circuit_tracer_maths(tmp_path, dtype, jump, skip, old):
    L, d, m = 2, 12, 20
    raw = write_set(tmp_path, L, d, m, jump=jump, skip=skip, old_decoder=old, dtype=dtype)
    write_config(tmp_path, "transcoder_set")
    tcs = load_circuit_tracer(tmp_path, dtype=dtype)
    assert len(tcs) == L and all(tc.W_enc.dtype == dtype for tc in tcs)
    assert tcs[1].hook_name == "blocks.1.ln2.hook_normalized"
    assert tcs[1].hook_name_out == "blocks.1.hook_mlp_out"
    g = torch.Generator().manual_seed(7)
    for l, tc in enumerate(tcs):
        assert tc.activation == ("jumprelu" if jump else "relu") and (tc.W_skip is not None) == skip
        x = _r(g, 9, d)
        f_ref, y_ref = ref_set(raw[l], x)
        v, i = tc.encode(x.to(dtype))
        torch.testing.assert_close(dense(v, i, m), f_ref, **tol(dtype))
        torch.testing.assert_close(tc(x.to(dtype)).double(), y_ref, **tol(dtype))


def test_transcoder_set_config_paths(tmp_path):
    """The config's ``transcoders`` list (relative to the config) and the older layout's
    {layer, filepath} entries (any order); hf:// is refused."""
    raw = write_set(tmp_path / "files", L=2)
    (tmp_path / "new.yaml").write_text(
        "model_kind: transcoder_set\nfeature_input_hook: hook_resid_mid\n"
        "feature_output_hook: hook_mlp_out\ntranscoders:\n"
        "  - files/layer_0.safetensors\n  - files/layer_1.safetensors\n")
    (tmp_path / "old.yaml").write_text(
        "model_name: org/model\nfeature_input_hook: hook_resid_mid\nfeature_output_hook: mlp.hook_out\n"
        f"transcoders:\n  - id: b\n    layer: 1\n    filepath: {tmp_path}/files/layer_1.safetensors\n"
        f"  - id: a\n    layer: 0\n    filepath: {tmp_path}/files/layer_0.safetensors\n")
    for name in ("new.yaml", "old.yaml"):
        tcs = load_circuit_tracer(tmp_path / name, dtype=torch.float64)
        assert tcs[0].hook_name == "blocks.0.hook_resid_mid"
        torch.testing.assert_close(tcs[1].W_enc, raw[1]["W_enc"].T)
    assert load_circuit_tracer(tmp_path / "old.yaml")[1].hook_name_out == "blocks.1.mlp.hook_out"
    (tmp_path / "hf.yaml").write_text("model_kind: transcoder_set\ntranscoders:\n"
                                      "  - hf://org/repo/layer_0.safetensors\n")
    with pytest.raises(ValueError, match="local files only"):
        load_circuit_tracer(tmp_path / "hf.yaml")
    (tmp_path / "dup.yaml").write_text(
        f"transcoders:\n  - layer: 0\n    filepath: {tmp_path}/files/layer_0.safetensors\n"
        f"  - layer: 0\n    filepath: {tmp_path}/files/layer_1.safetensors\n")
    with pytest.raises(CorruptFileError, match="once each"):
        load_circuit_tracer(tmp_path / "dup.yaml")


def test_transcoder_set_bad_files(tmp_path):
    p = tmp_path / "missing"
    write_set(p, L=2)
    write_config(p, "transcoder_set", extra="transcoders:\n  - layer_0.safetensors\n"
                 "  - layer_1.safetensors\n")
    (p / "layer_1.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="layer_1.safetensors"):
        load_circuit_tracer(p)
    p = tmp_path / "d_sae"
    write_set(p, L=2)
    write_set(p / "other", L=2, m=24)
    (p / "other" / "layer_1.safetensors").rename(p / "layer_1.safetensors")
    with pytest.raises(CorruptFileError, match="layer 1 has .*'d_sae': 24.*layer 0 .*'d_sae': 20"):
        load_circuit_tracer(p)
    p = tmp_path / "shape"
    write_set(p, L=2)
    save_file({"W_enc": torch.zeros(20, 12), "W_dec": torch.zeros(20, 12), "b_enc": torch.zeros(20),
               "b_dec": torch.zeros(13)}, str(p / "layer_1.safetensors"))
    with pytest.raises(CorruptFileError, match=r"tensor b_dec has shape \(13,\), expected \(12,\)"):
        load_circuit_tracer(p)
    p = tmp_path / "extra"
    write_set(p, L=1)
    save_file({"W_enc": torch.zeros(20, 12), "W_dec": torch.zeros(20, 12), "b_enc": torch.zeros(20),
               "b_dec": torch.zeros(12), "log_thresholds": torch.zeros(20)}, str(p / "layer_0.safetensors"))
    with pytest.raises(CorruptFileError, match="unexpected tensors \\['log_thresholds'\\]"):
        load_circuit_tracer(p)
    p = tmp_path / "act"
    write_set(p, L=1)
    write_config(p, "transcoder_set", extra="activation: topk\nk: 4\n")
    with pytest.raises(ValueError, match="activation 'topk' is not supported"):
        load_circuit_tracer(p)


# ----------------------------------------------------------------------------- attribution
class RawCLT:
    """An independent CircuitDictionary over the raw tensors (circuit-tracer's maths)."""

    cross_layer, input_site = True, "mlp_in"

    def __init__(self, raw):
        self.raw, self.n_layers, self.d_model = raw, len(raw), raw[0]["W_enc"].shape[1]

    def d_sae(self, layer):
        return self.raw[layer]["W_enc"].shape[0]

    def encode(self, layer, x):
        f = ref_codes(self.raw[layer], x.double(), "threshold")
        return f, torch.arange(f.shape[-1]).expand(f.shape)

    def encoder_weight(self, layer):
        return self.raw[layer]["W_enc"].T

    def decoder_weight(self, source, target):
        return self.raw[source]["W_dec"][:, target - source]

    def output_bias(self, layer):
        return self.raw[layer]["b_dec"]

    def skip_weight(self, layer):
        return None


@pytest.mark.parametrize("jump", [False, True])
def test_loaded_clt_drives_attribution(tmp_path, jump):
    """A CLT read from circuit-tracer's files through as_dictionary + attribute: the
    replacement's reconstructions are circuit-tracer's maths on the raw tensors, and the graph's
    influence equals the dense reference over the independent raw-tensor dictionary."""
    m = tiny_model()
    D = m.cfg.d_model
    raw = write_clt(tmp_path, L=2, d=D, m=24, jump=jump, dtype=torch.float64)
    write_config(tmp_path, "cross_layer_transcoder")
    clt = load_circuit_tracer(tmp_path, dtype=torch.float64)
    assert as_dictionary(clt).input_site == "mlp_in"
    t = tokens()
    rm = LocalReplacement(m, clt, t, dtype=torch.float64)
    _, y_ref = ref_clt(raw, [rm.inputs[0].double(), rm.inputs[1].double()])
    for l in range(2):
        torch.testing.assert_close(rm.reconstruction(l), y_ref[l], atol=1e-12, rtol=1e-10)
    g = attribute(m, clt, t, dtype=torch.float64)
    ref = dense_attribution(m, RawCLT(raw), t)
    torch.testing.assert_close(g.influence, ref["influence"], atol=1e-10, rtol=1e-8)
    assert g.feat_index.numel() > 0


# ----------------------------------------------------------------------------- circuit-tracer itself
def _circuit_tracer():
    return pytest.importorskip("circuit_tracer.transcoder.cross_layer_transcoder",
                               reason="circuit-tracer is not installed (optional peer check; "
                               "the independent tests above run regardless)")


@pytest.mark.parametrize("jump", [False, True])
def test_files_written_by_circuit_tracer_clt(tmp_path, jump):
    ctc = _circuit_tracer()
    L, d, m = 3, 10, 16
    clt_ct = ctc.CrossLayerTranscoder(L, m, d, activation_function="jump_relu" if jump else "relu",
                                      lazy_decoder=False, device=torch.device("cpu"),
                                      dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in clt_ct.named_parameters():
            p.copy_(torch.rand(p.shape, generator=g) * 0.3 if "threshold" in name
                    else torch.randn(p.shape, generator=g) * 0.3)
    clt_ct.to_safetensors(str(tmp_path))
    ours = load_circuit_tracer(tmp_path)
    x = torch.randn(L, 5, d, generator=g)
    with torch.no_grad():
        f_ct = clt_ct.encode(x)
        y_ct = clt_ct.forward(x)
    for l in range(L):
        v, i = ours.encode_layer(l, x[l])
        torch.testing.assert_close(dense(v, i, m).float(), f_ct[l], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours(list(x)), y_ct, atol=1e-5, rtol=1e-4)
    # and circuit-tracer reads what the test writer writes
    raw = write_clt(tmp_path / "ours", L, d, m, jump=jump)
    back = ctc.load_clt(str(tmp_path / "ours"), device=torch.device("cpu"), dtype=torch.float32,
                        lazy_decoder=False)
    xs = [torch.randn(4, d, generator=g, dtype=torch.float64) for _ in range(L)]
    with torch.no_grad():
        y_back = back.forward(torch.stack(xs).float())
    torch.testing.assert_close(y_back.double(), ref_clt(raw, xs)[1], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("jump,skip", [(False, True), (True, False)])
def test_files_written_by_circuit_tracer_set(tmp_path, jump, skip):
    _circuit_tracer()
    from circuit_tracer.transcoder.single_layer_transcoder import load_transcoder_set

    L, d, m = 2, 10, 16
    raw = write_set(tmp_path, L, d, m, jump=jump, skip=skip)
    ct = load_transcoder_set({l: str(tmp_path / f"layer_{l}.safetensors") for l in range(L)},
                             scan="test", feature_input_hook="hook_resid_mid",
                             feature_output_hook="hook_mlp_out", device=torch.device("cpu"),
                             dtype=torch.float32, lazy_encoder=False, lazy_decoder=False)
    ours = load_circuit_tracer(tmp_path)
    g = torch.Generator().manual_seed(2)
    for l in range(L):
        x = torch.randn(6, d, generator=g)
        with torch.no_grad():
            f_ct = ct[l].encode(x)
            y_ct = ct[l].decode(f_ct, x)  # adds x W_skip^T itself
        v, i = ours[l].encode(x)
        torch.testing.assert_close(dense(v, i, m).float(), f_ct, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours[l](x), y_ct, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ref_set(raw[l], x.double())[1].float(), y_ct, atol=1e-5, rtol=1e-4)
    out = tmp_path / "written"
    ct.to_safetensors(str(out))
    again = load_circuit_tracer(out, dtype=torch.float64)
    torch.testing.assert_close(again[1].W_dec, raw[1]["W_dec"])
