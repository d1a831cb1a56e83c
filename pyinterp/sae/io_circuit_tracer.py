"""circuit-tracer's transcoder files read from local directories (never unpickling).

circuit-tracer (safety-research/circuit-tracer) runs attribution graphs on two kinds of
dictionary; the layouts below follow its loaders (docs/decisions/circuit-tracer-formats.md).

**Transcoder set** (``single_layer_transcoder.py``): one safetensors file per layer,
``layer_{l}.safetensors`` (or the paths a config lists), each holding ``W_enc`` (d_sae, d_model),
``W_dec`` (d_sae, d_model) (releases before 0.5: (d_model, d_sae), told apart by shape),
``b_enc`` (d_sae,), ``b_dec`` (d_model,), optionally ``W_skip`` (d_model, d_model) (y += x
W_skip^T) and ``activation_function.threshold`` (d_sae,) (JumpReLU: f = pre [pre > threshold];
else ReLU: f = ReLU(pre)), pre = x W_enc^T + b_enc. Loads as one
:class:`~pyinterp.sae.Transcoder` per layer, in layer order.

**Cross-layer transcoder** (``cross_layer_transcoder.py``, ``CrossLayerTranscoder.to_safetensors``):
for each layer l, ``W_enc_{l}.safetensors`` holding ``W_enc_{l}`` (d_sae, d_model), ``b_enc_{l}``
(d_sae,), ``b_dec_{l}`` (d_model,: the bias of output layer l), optionally ``threshold_{l}``
(d_sae,), and ``W_dec_{l}.safetensors`` holding ``W_dec_{l}`` (d_sae, L - l, d_model): row
``[:, j - l]`` is W^{l->j}. Loads as :class:`~pyinterp.sae.CrossLayerTranscoder`.

**config.yaml** (optional, in the directory; or the path itself): ``model_kind``
(``transcoder_set`` / ``cross_layer_transcoder``), ``feature_input_hook`` /
``feature_output_hook`` (TransformerLens hook suffixes, recorded as ``blocks.{l}.<hook>``) and,
for a set, ``transcoders`` (paths, list index = layer; the older layout's ``{layer, filepath}``
entries too). Without a config the hooks default to circuit-tracer's CLT defaults,
``hook_resid_mid`` / ``hook_mlp_out``. ``hf://`` paths are refused: download them first.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import torch

from pyinterp._files import CorruptFileError, load_tensors, read_header
from pyinterp.sae.config import dtype_name, parse_dtype
from pyinterp.sae.registry import get_sae_class

CONFIG = "config.yaml"
MAX_LAYERS = 4096
MAX_WIDTH = 1 << 26  # d_model and d_sae: far above any released dictionary
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
DEFAULT_HOOKS = ("hook_resid_mid", "hook_mlp_out")
THRESHOLD = "activation_function.threshold"  # a per-layer file's JumpReLU thresholds


def is_circuit_tracer(path) -> bool:
    """A directory in one of circuit-tracer's layouts (and not a SAELens/pyinterp one)."""
    p = Path(path)
    if p.is_file():
        return p.suffix in (".yaml", ".yml")
    return p.is_dir() and not (p / "cfg.json").exists() and any(
        (p / f).is_file() for f in (CONFIG, "W_enc_0.safetensors", "layer_0.safetensors"))


def _read_config(file: Path) -> dict:
    try:
        import yaml
    except ImportError:
        raise ImportError(f"reading {file} needs PyYAML, from the 'hf' extra: "
                          "pip install 'pyinterp[hf]' (or pyyaml)") from None
    try:
        cfg = yaml.safe_load(file.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CorruptFileError(f"{file} is not a readable YAML config ({exc})", file) from None
    if not isinstance(cfg, dict):
        raise CorruptFileError(f"{file}: expected a YAML mapping, got {type(cfg).__name__}", file)
    return cfg


def _hooks(cfg: dict, file, input_hook, output_hook) -> tuple:
    out = []
    for given, key, default in ((input_hook, "feature_input_hook", DEFAULT_HOOKS[0]),
                                (output_hook, "feature_output_hook", DEFAULT_HOOKS[1])):
        v = given if given is not None else cfg.get(key, default)
        if not isinstance(v, str) or not v:
            raise CorruptFileError(f"{file}: {key} must be a hook name, got {v!r}", file)
        out.append(v)
    return tuple(out)


def _local(root: Path, p, file) -> Path:
    if not isinstance(p, str) or not p:
        raise CorruptFileError(f"{file}: a transcoder path must be a string, got {p!r}", file)
    if p.startswith("hf://"):
        raise ValueError(f"{file} names {p}: pyinterp reads local files only; download the "
                         "file (huggingface_hub.hf_hub_download) and point the config at it")
    q = Path(p)
    return q if q.is_absolute() else root / q


def _set_paths(cfg: dict, root: Path, file) -> list:
    """The per-layer files of a transcoder set, in layer order."""
    entries = cfg.get("transcoders")
    if entries is None:
        n = sum(1 for f in root.glob("layer_*.safetensors"))
        return [root / f"layer_{l}.safetensors" for l in range(n)]
    if not isinstance(entries, list) or not entries or len(entries) > MAX_LAYERS:
        raise CorruptFileError(f"{file}: 'transcoders' must be a list of 1..{MAX_LAYERS} entries",
                               file)
    if all(isinstance(e, dict) for e in entries):  # the older {id, layer, filepath} entries
        layers = [e.get("layer") for e in entries]
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in layers) or \
                sorted(layers) != list(range(len(entries))):
            raise CorruptFileError(f"{file}: the transcoders' layers must be 0..{len(entries) - 1} "
                                   f"once each, got {layers}", file)
        by_layer = {e["layer"]: e.get("filepath") for e in entries}
        return [_local(root, by_layer[l], file) for l in range(len(entries))]
    return [_local(root, e, file) for e in entries]


def _check(header: dict, file: Path, shapes: dict, optional: tuple = ()) -> None:
    """Every tensor of ``shapes`` present (bar ``optional``) with that shape and a float dtype;
    nothing else in the file."""
    for name, shape in shapes.items():
        if name not in header:
            if name in optional:
                continue
            raise CorruptFileError(f"{file} is missing the tensor {name!r} (has "
                                   f"{sorted(header)})", file)
        dt, got = header[name]
        if dt not in FLOAT_DTYPES:
            raise CorruptFileError(f"{file}: tensor {name} is {dt}, expected a float dtype", file)
        if tuple(got) != tuple(shape):
            raise CorruptFileError(f"{file}: tensor {name} has shape {tuple(got)}, expected "
                                   f"{tuple(shape)}", file)
    extra = sorted(set(header) - set(shapes))
    if extra:
        raise CorruptFileError(f"{file}: unexpected tensors {extra} (a circuit-tracer file holds "
                               f"{sorted(shapes)})", file)


def _width(v, what: str, file) -> int:
    if not 1 <= v <= MAX_WIDTH:
        raise CorruptFileError(f"{file}: {what} = {v} is outside [1, {MAX_WIDTH}]", file)
    return v


def _two_d(header: dict, name: str, file: Path) -> tuple:
    if name not in header:
        raise CorruptFileError(f"{file} is missing the tensor {name!r} (has {sorted(header)})",
                               file)
    shape = header[name][1]
    if len(shape) != 2:
        raise CorruptFileError(f"{file}: {name} must be 2-D (d_sae, d_model), got {shape}", file)
    return _width(shape[0], "d_sae", file), _width(shape[1], "d_model", file)


def load_transcoder_set(paths, *, input_hook: str = DEFAULT_HOOKS[0],
                        output_hook: str = DEFAULT_HOOKS[1], device="cpu", dtype=None) -> list:
    """One :class:`~pyinterp.sae.Transcoder` per file of ``paths`` (layer l = ``paths[l]``) in
    circuit-tracer's per-layer layout (module docstring). All headers are checked, against
    each other too, before any tensor is read."""
    Transcoder = get_sae_class("transcoder")
    paths = [Path(p) for p in paths]
    if not paths:
        raise FileNotFoundError("no circuit-tracer transcoder files (layer_0.safetensors, ...)")
    layouts = []
    for l, file in enumerate(paths):
        header, _ = read_header(file, f"circuit-tracer transcoder of layer {l}")
        d_sae, d_model = _two_d(header, "W_enc", file)
        dec = tuple(header.get("W_dec", (None, ()))[1])
        shapes = {"W_enc": (d_sae, d_model), "b_enc": (d_sae,), "b_dec": (d_model,),
                  "W_dec": (d_model, d_sae) if dec == (d_model, d_sae) and d_model != d_sae
                  else (d_sae, d_model),
                  "W_skip": (d_model, d_model), THRESHOLD: (d_sae,)}
        _check(header, file, shapes, optional=("W_skip", THRESHOLD))
        layouts.append((d_sae, d_model, "W_skip" in header, THRESHOLD in header,
                        shapes["W_dec"] != (d_sae, d_model)))
        if l and layouts[l][:4] != layouts[0][:4]:  # circuit-tracer's set asserts this too
            got, want = (dict(zip(("d_sae", "d_model", "skip", "threshold"), x[:4]))
                         for x in (layouts[l], layouts[0]))
            raise CorruptFileError(f"{file}: layer {l} has {got}, layer 0 ({paths[0]}) has "
                                   f"{want}: every layer of a set must match", file)
    out = []
    for l, (file, (d_sae, d_model, skip, jump, dec_t)) in enumerate(zip(paths, layouts)):
        t = load_tensors(file, f"circuit-tracer transcoder of layer {l}")
        target = parse_dtype(dtype) if dtype is not None else torch.float32
        tc = Transcoder(d_model, d_sae, activation="jumprelu" if jump else "relu", skip=skip,
                        hook_name=f"blocks.{l}.{input_hook}",
                        hook_name_out=f"blocks.{l}.{output_hook}", dtype=dtype_name(target),
                        device=device)
        with torch.no_grad():
            tc.W_enc.copy_(t["W_enc"].T)
            tc.b_enc.copy_(t["b_enc"])
            tc.W_dec.copy_(t["W_dec"].T if dec_t else t["W_dec"])
            tc.b_dec.copy_(t["b_dec"])
            if skip:
                tc.W_skip.copy_(t["W_skip"])
            if jump:
                tc.threshold.copy_(t[THRESHOLD])
        tc.data_initialised = True
        out.append(tc.eval())
    return out


def _clt_layers(root: Path) -> int:
    found = [m for f in root.glob("W_enc_*.safetensors")
             if (m := re.fullmatch(r"W_enc_(\d+)\.safetensors", f.name))]
    idx = sorted(int(m.group(1)) for m in found)
    if not idx:
        raise FileNotFoundError(f"no circuit-tracer CLT encoder files (W_enc_0.safetensors, ...) "
                                f"in {root}")
    if idx != list(range(len(idx))) or len(idx) > MAX_LAYERS:
        missing = sorted(set(range(max(idx) + 1)) - set(idx))
        raise CorruptFileError(f"{root}: CLT encoder files must be W_enc_0 .. W_enc_{{L-1}}; "
                               f"missing layers {missing}", root)
    return len(idx)


def load_clt(path, *, input_hook: str = DEFAULT_HOOKS[0], output_hook: str = DEFAULT_HOOKS[1],
             device="cpu", dtype=None):
    """A :class:`~pyinterp.sae.CrossLayerTranscoder` from circuit-tracer's CLT directory
    (``W_enc_{l}.safetensors`` + ``W_dec_{l}.safetensors`` per layer; module docstring)."""
    CLT = get_sae_class("clt")
    root = Path(path)
    L = _clt_layers(root)
    enc_files = [root / f"W_enc_{l}.safetensors" for l in range(L)]
    dec_files = [root / f"W_dec_{l}.safetensors" for l in range(L)]
    d_sae = d_model = jump = None
    for l in range(L):
        header, _ = read_header(enc_files[l], f"circuit-tracer CLT encoder of layer {l}")
        if l == 0:
            d_sae, d_model = _two_d(header, "W_enc_0", enc_files[0])
            jump = "threshold_0" in header
        shapes = {f"W_enc_{l}": (d_sae, d_model), f"b_enc_{l}": (d_sae,),
                  f"b_dec_{l}": (d_model,)}
        if jump:
            shapes[f"threshold_{l}"] = (d_sae,)
        _check(header, enc_files[l], shapes)
        header, _ = read_header(dec_files[l], f"circuit-tracer CLT decoder of layer {l}")
        _check(header, dec_files[l], {f"W_dec_{l}": (d_sae, L - l, d_model)})
    target = parse_dtype(dtype) if dtype is not None else torch.float32
    clt = CLT(L, d_model, d_sae, activation="jumprelu" if jump else "relu",
              hook_names=[f"blocks.{l}.{input_hook}" for l in range(L)],
              hook_names_out=[f"blocks.{l}.{output_hook}" for l in range(L)],
              dtype=dtype_name(target), device=device)
    with torch.no_grad():
        for l in range(L):
            enc = load_tensors(enc_files[l], f"circuit-tracer CLT encoder of layer {l}")
            clt.W_enc[l].copy_(enc[f"W_enc_{l}"].T)
            clt.b_enc[l].copy_(enc[f"b_enc_{l}"])
            clt.b_dec[l].copy_(enc[f"b_dec_{l}"])
            if jump:
                clt.threshold[l].copy_(enc[f"threshold_{l}"])
            dec = load_tensors(dec_files[l], f"circuit-tracer CLT decoder of layer {l}")
            clt.decoders_from(l).copy_(dec[f"W_dec_{l}"].transpose(0, 1))
    clt.data_initialised = True
    return clt.eval()


def load_circuit_tracer(path, *, input_hook: Optional[str] = None,
                        output_hook: Optional[str] = None, device="cpu", dtype=None):
    """circuit-tracer's transcoders at ``path`` (a directory, or its ``config.yaml``): a
    :class:`~pyinterp.sae.CrossLayerTranscoder` for a CLT, a list of
    :class:`~pyinterp.sae.Transcoder` (one per layer, in order) for a transcoder set. Either
    goes to :func:`pyinterp.circuits.as_dictionary`. ``input_hook`` / ``output_hook``
    override the config's ``feature_input_hook`` / ``feature_output_hook``. ``dtype``:
    default float32."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"circuit-tracer transcoders: {p} does not exist")
    file = p if p.is_file() else p / CONFIG
    root = p.parent if p.is_file() else p
    cfg = _read_config(file) if file.is_file() else {}
    ins, outs = _hooks(cfg, file, input_hook, output_hook)
    kind = cfg.get("model_kind")
    if kind is None:  # no config (or the older one, which only held transcoder sets)
        kind = "cross_layer_transcoder" if (root / "W_enc_0.safetensors").is_file() \
            and "transcoders" not in cfg else "transcoder_set"
    if kind == "cross_layer_transcoder":
        return load_clt(root, input_hook=ins, output_hook=outs, device=device, dtype=dtype)
    if kind == "transcoder_set":
        act = cfg.get("activation")
        if act not in (None, "relu", "jump_relu", "jumprelu"):
            raise ValueError(f"{file}: activation {act!r} is not supported (relu, or JumpReLU "
                             f"given by a per-file {THRESHOLD!r})")
        return load_transcoder_set(_set_paths(cfg, root, file), input_hook=ins, output_hook=outs,
                                   device=device, dtype=dtype)
    raise CorruptFileError(f"{file}: model_kind must be 'transcoder_set' or "
                           f"'cross_layer_transcoder', got {kind!r}", file)
