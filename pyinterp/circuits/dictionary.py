"""What circuit tracing needs from a dictionary: the :class:`CircuitDictionary` protocol.

A per-layer transcoder set or a cross-layer transcoder (CLT) replaces every MLP of a model.
Layer ``l``'s features read the dictionary input of that layer (``input_site``: the MLP input
``"mlp_in"``, i.e. ``blocks.{l}.ln2.hook_normalized``, or the residual stream before the MLP
``"resid_mid"``) and write to the MLP outputs ``blocks.{t}.hook_mlp_out`` of layers t >= l
(only t == l for per-layer transcoders). Everything is in the model's units: any input or
output scaling a dictionary applies internally is folded into the weights it returns here.

    pre_l  = x_l @ encoder_weight(l) + const          (the feature's pre-activation)
    codes  = encode(l, x_l)                            (values, indices), values == 0: padding
    mlp_out_t ~ sum_{s <= t} sparse_decode(codes_s, decoder_weight(s, t))
                + output_bias(t) + x_t @ skip_weight(t)

Any object with these members works (duck typing, checked by :func:`check_dictionary`);
:class:`NeuronDictionary` (the MLP neurons themselves, the paper's baseline) and the
dictionaries of :mod:`pyinterp.sae` (through their own adapters) implement it.
"""
from __future__ import annotations

from typing import Optional, Protocol, Sequence, runtime_checkable

import torch

INPUT_SITES = ("mlp_in", "resid_mid")


@runtime_checkable
class CircuitDictionary(Protocol):
    """Per-layer encoders and (cross-layer) decoders of a transcoder set or a CLT."""

    n_layers: int
    d_model: int
    # "mlp_in" (LayerNorm output feeding the MLP) or "resid_mid" (residual stream before it).
    input_site: str
    # True: layer s features also write to layers t > s (decoder_weight(s, t) for all t >= s).
    cross_layer: bool

    def d_sae(self, layer: int) -> int:
        """Number of features of ``layer``."""

    def encode(self, layer: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (N, d_model) dictionary input of ``layer`` -> (values, indices), each (N, k);
        entries with value 0 are padding (indices must still be in range)."""

    def encoder_weight(self, layer: int) -> torch.Tensor:
        """(d_model, d_sae): pre-activation = x @ W + const (model units)."""

    def decoder_weight(self, source: int, target: int) -> torch.Tensor:
        """(d_sae(source), d_model): what one unit of each source feature adds to layer
        ``target``'s MLP output (model units); ``target >= source``."""

    def output_bias(self, layer: int) -> torch.Tensor | None:
        """(d_model,) constant added to layer ``layer``'s reconstruction, or None."""

    def skip_weight(self, layer: int) -> torch.Tensor | None:
        """(d_model, d_model) linear skip (reconstruction += x @ W_skip), or None."""


_MEMBERS = ("n_layers", "d_model", "input_site", "cross_layer", "d_sae", "encode", "encoder_weight",
            "decoder_weight", "output_bias", "skip_weight")


def check_dictionary(dictionary, n_layers: int, d_model: int) -> None:
    """Raise TypeError/ValueError naming what a dictionary lacks for a model of this shape."""
    missing = [m for m in _MEMBERS if not hasattr(dictionary, m)]
    if missing:
        raise TypeError(f"dictionary {type(dictionary).__name__} does not implement "
                        f"pyinterp.circuits.CircuitDictionary: missing {missing}")
    if dictionary.n_layers != n_layers:
        raise ValueError(f"dictionary has n_layers={dictionary.n_layers} but the model has {n_layers} "
                         "layers: one dictionary layer per MLP is needed")
    if dictionary.d_model != d_model:
        raise ValueError(f"dictionary has d_model={dictionary.d_model} but the model's residual "
                         f"stream has d_model={d_model}")
    if dictionary.input_site not in INPUT_SITES:
        raise ValueError(f"dictionary.input_site must be one of {INPUT_SITES}, got "
                         f"{dictionary.input_site!r}")


def targets_of(dictionary, source: int) -> range:
    """The layers whose MLP outputs layer ``source``'s features write to."""
    if dictionary.cross_layer:
        return range(source, dictionary.n_layers)
    return range(source, source + 1)


class NeuronDictionary:
    """The MLP neurons as features (the paper's baseline for transcoders): exact for any
    elementwise activation, ``mlp_out = act(x W_in + b_in) W_out + b_out``.

    Neurons with |activation| <= ``threshold`` are left out of the code; what they contribute
    goes to the error nodes (``threshold=0``: only exact zeros, e.g. of a ReLU). Works on the
    ``"mlp_in"`` site of models whose blocks expose ``mlp.W_in/b_in/W_out/b_out`` and a plain
    activation (pyinterp's Transformer with GELU or ReLU MLPs, TransformerLens models).
    """

    input_site = "mlp_in"
    cross_layer = False

    def __init__(self, model, threshold: float = 0.0, max_active: int | None = None):
        import torch.nn.functional as F

        act = getattr(model.cfg, "act_fn", None)
        acts = {"relu": F.relu, "gelu": F.gelu, "gelu_new": lambda x: F.gelu(x, approximate="tanh")}
        if act not in acts:
            raise ValueError(f"NeuronDictionary needs an elementwise MLP activation {sorted(acts)}, "
                             f"the model has act_fn={act!r}")
        blocks = getattr(model, "blocks", None) or model.model.blocks
        self._mlps = [b.mlp for b in blocks]
        self._act = acts[act]
        self.n_layers = len(self._mlps)
        self.d_model = self._mlps[0].W_in.shape[0]
        self.threshold = float(threshold)
        self.max_active = max_active

    def d_sae(self, layer: int) -> int:
        return self._mlps[layer].W_in.shape[1]

    @torch.no_grad()
    def encode(self, layer: int, x: torch.Tensor):
        m = self._mlps[layer]
        a = self._act(x.to(m.W_in.dtype) @ m.W_in + m.b_in)  # (N, d_mlp)
        keep = a.abs() > self.threshold
        width = int(keep.sum(-1).max()) if keep.numel() else 0
        if self.max_active is not None:
            width = min(width, self.max_active)
        width = max(width, 1)
        score = torch.where(keep, a.abs(), torch.full_like(a, -1.0))
        top, idx = score.topk(width, dim=-1)
        values = torch.where(top >= 0, a.gather(-1, idx), torch.zeros_like(top))
        return values, idx

    def encoder_weight(self, layer: int) -> torch.Tensor:
        return self._mlps[layer].W_in.detach()

    def decoder_weight(self, source: int, target: int) -> torch.Tensor:
        if target != source:
            raise ValueError("NeuronDictionary is per-layer: decoder_weight needs target == source")
        return self._mlps[source].W_out.detach()

    def output_bias(self, layer: int) -> torch.Tensor | None:
        return self._mlps[layer].b_out.detach()

    def skip_weight(self, layer: int) -> torch.Tensor | None:
        return None


def _site_of(hook_name, what: str) -> str:
    if hook_name is None:
        raise ValueError(f"{what} has no hook name: pass input_site='mlp_in' or 'resid_mid'")
    if hook_name.endswith("ln2.hook_normalized"):
        return "mlp_in"
    if hook_name.endswith("hook_resid_mid"):
        return "resid_mid"
    raise ValueError(f"{what} reads {hook_name!r}; circuit tracing needs dictionaries that read the "
                     "MLP input (blocks.{l}.ln2.hook_normalized) or blocks.{l}.hook_resid_mid")


class CLTDictionary:
    """A :class:`pyinterp.sae.CrossLayerTranscoder` seen through :class:`CircuitDictionary`:
    its input and output scales folded into the weights (model units)."""

    cross_layer = True

    def __init__(self, clt, input_site: Optional[str] = None):
        self.clt = clt
        self.n_layers = int(clt.n_layers)
        if clt.d_out != clt.d_in:
            raise ValueError(f"a CLT for circuit tracing writes to the residual stream: d_out "
                             f"({clt.d_out}) must equal d_in ({clt.d_in})")
        self.d_model = int(clt.d_in)
        names = getattr(clt.cfg, "hook_names", None) or [None]
        self.input_site = input_site or _site_of(names[0], "the CLT")

    def d_sae(self, layer: int) -> int:
        return int(self.clt.d_sae)

    @torch.no_grad()
    def encode(self, layer: int, x: torch.Tensor):
        return self.clt.encode_layer(layer, x)

    def encoder_weight(self, layer: int) -> torch.Tensor:
        return (self.clt.W_enc[layer] * self.clt.input_scale[layer]).detach()

    def decoder_weight(self, source: int, target: int) -> torch.Tensor:
        return (self.clt.decoder(source, target) / self.clt.output_scale[target]).detach()

    def output_bias(self, layer: int) -> Optional[torch.Tensor]:
        return (self.clt.b_dec[layer] / self.clt.output_scale[layer]).detach()

    def skip_weight(self, layer: int) -> Optional[torch.Tensor]:
        return None


class TranscoderSet:
    """One :class:`pyinterp.sae.Transcoder` per layer seen through :class:`CircuitDictionary`
    (scales folded into the weights; the skip ``W_skip`` (d_out, d_in) as x @ W_skip.T)."""

    cross_layer = False

    def __init__(self, transcoders: Sequence, input_site: Optional[str] = None):
        self.tcs = list(transcoders)
        if not self.tcs:
            raise ValueError("TranscoderSet needs one transcoder per layer, got none")
        self.n_layers = len(self.tcs)
        self.d_model = int(self.tcs[0].d_in)
        for l, tc in enumerate(self.tcs):
            if tc.d_in != self.d_model or tc.d_out != self.d_model:
                raise ValueError(f"transcoder {l} maps {tc.d_in} -> {tc.d_out}; circuit tracing needs "
                                 f"d_model -> d_model ({self.d_model})")
        self.input_site = input_site or _site_of(self.tcs[0].hook_name, "transcoder 0")

    def d_sae(self, layer: int) -> int:
        return int(self.tcs[layer].d_sae)

    @torch.no_grad()
    def encode(self, layer: int, x: torch.Tensor):
        return self.tcs[layer].encode(x)

    def encoder_weight(self, layer: int) -> torch.Tensor:
        tc = self.tcs[layer]
        return (tc.W_enc * tc.input_scale).detach()

    def decoder_weight(self, source: int, target: int) -> torch.Tensor:
        if target != source:
            raise ValueError("per-layer transcoders: decoder_weight needs target == source")
        tc = self.tcs[source]
        return (tc.W_dec / tc.output_scale).detach()

    def output_bias(self, layer: int) -> Optional[torch.Tensor]:
        tc = self.tcs[layer]
        return (tc.b_dec / tc.output_scale).detach()

    def skip_weight(self, layer: int) -> Optional[torch.Tensor]:
        tc = self.tcs[layer]
        if getattr(tc, "W_skip", None) is None:
            return None
        return (tc.W_skip.T * tc.input_scale / tc.output_scale).detach()


def as_dictionary(obj, input_site: Optional[str] = None):
    """A :class:`CircuitDictionary` for ``obj``: an object that already implements it, a
    cross-layer transcoder (``encode_layer`` + ``decoder(source, target)``), or a sequence of
    per-layer transcoders (``encode`` + ``W_enc``/``W_dec``)."""
    if all(hasattr(obj, m) for m in _MEMBERS):
        return obj
    if hasattr(obj, "encode_layer") and hasattr(obj, "decoder") and hasattr(obj, "n_layers"):
        return CLTDictionary(obj, input_site)
    if isinstance(obj, (list, tuple)) and obj and all(hasattr(t, "encode") and hasattr(t, "W_dec") for t in obj):
        return TranscoderSet(obj, input_site)
    raise TypeError(f"{type(obj).__name__} is not a CircuitDictionary, a cross-layer transcoder or a "
                    "list of per-layer transcoders")
