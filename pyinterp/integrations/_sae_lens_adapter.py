"""The SAELens ``SAE`` subclass behind :func:`pyinterp.integrations.sae_lens.as_sae_lens` (built
on first use, so importing pyinterp never imports sae-lens)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from pyinterp.sae import _kernels as K
from pyinterp.sae import _sparse_grad as S


def _hooked(point) -> bool:
    return bool(getattr(point, "_forward_hooks", None)) or bool(getattr(point, "_backward_hooks", None))


def dense_activation(sae, pre: torch.Tensor) -> torch.Tensor:
    """The dictionary's activation applied to a dense pre-activation (N, d_sae) — only used when
    a hook reads or edits ``hook_sae_acts_pre``; the kernels never build it otherwise."""
    arch = sae.cfg.architecture
    if arch == "topk":
        top = pre.topk(int(sae.cfg.k), dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
    if arch == "standard":
        return pre.relu()
    if arch == "batchtopk" and not (sae.use_threshold if sae.use_threshold is not None else not sae.training):
        flat = pre.relu().flatten()
        top = flat.topk(int(sae.cfg.k) * pre.shape[0])
        return torch.zeros_like(flat).scatter(0, top.indices, top.values).view_as(pre)
    if arch in ("jumprelu", "batchtopk"):
        thr = sae.threshold.detach().to(pre.dtype).clamp_min(0)
        return pre * (pre > thr)
    raise TypeError(f"a hook on hook_sae_acts_pre is not supported for {type(sae).__name__} "
                    f"(architecture {arch!r}) through as_sae_lens")


def build_adapter_class():
    from sae_lens.saes.sae import SAE, SAEConfig, SAEMetadata

    @dataclass
    class PyinterpSAEConfig(SAEConfig):
        """SAELens config of a pyinterp dictionary seen through :func:`as_sae_lens`."""

        @classmethod
        def architecture(cls) -> str:
            return "pyinterp"

    class PyinterpSAE(SAE):
        """A pyinterp dictionary behind SAELens's ``SAE`` interface (see ``as_sae_lens``)."""

        def __init__(self, module):
            object.__setattr__(self, "_pyinterp_module", module)  # before SAE.__init__ reads it
            c = module.cfg
            cfg = PyinterpSAEConfig(
                d_in=c.d_in, d_sae=c.d_sae, dtype=str(module.W_enc.dtype).replace("torch.", ""),
                device=str(module.W_enc.device), apply_b_dec_to_input=c.apply_b_dec_to_input,
                metadata=SAEMetadata(hook_name=c.hook_name, written_by="pyinterp"))
            super().__init__(cfg)

        @property
        def module(self):
            return self.__dict__["_pyinterp_module"]

        def initialize_weights(self):
            m = self.__dict__["_pyinterp_module"]
            self.W_enc, self.b_enc, self.W_dec, self.b_dec = m.W_enc, m.b_enc, m.W_dec, m.b_dec

        def _inputs(self, x):
            m = self.module
            x = self.hook_sae_input(x.to(m.W_enc.dtype))
            lead = x.shape[:-1]
            xn, state = m._normalize_in(m._flatten(x))
            self.__dict__["_norm_state"] = state  # for decode, as SAELens keeps its own
            return xn, lead

        def encode(self, x):
            m = self.module
            xn, lead = self._inputs(x)
            if _hooked(self.hook_sae_acts_pre):
                b = m._b_dec_in()
                pre = (xn - b if b is not None else xn) @ m.W_enc + m.b_enc
                acts = dense_activation(m, self.hook_sae_acts_pre(pre))
            else:
                v, i = m._encode(xn)
                acts = K.dense_from_sparse(v, i, m.d_sae)
            return self.hook_sae_acts_post(acts.reshape(*lead, m.d_sae))

        def decode(self, feature_acts):
            m = self.module
            lead = feature_acts.shape[:-1]
            out = S.decode(feature_acts.to(m.W_dec.dtype), m.W_dec, m.b_dec)
            if out is None:  # a dense code: the GEMM is faster
                out = feature_acts.reshape(-1, m.d_sae).to(m.W_dec.dtype) @ m.W_dec + m.b_dec
            out = self.hook_sae_recons(out.reshape(*lead, m.d_in))
            state = self.__dict__.pop("_norm_state", None)
            return m._normalize_out(out.reshape(-1, m.d_in), state).reshape(*lead, m.d_in)

        def forward(self, x):
            hooks = ("hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons")
            if self.use_error_term or any(_hooked(getattr(self, h)) for h in hooks):
                return super().forward(x)  # SAELens's path: the dense code, every hook
            m = self.module
            xn, lead = self._inputs(x)
            v, i = m._encode(xn)
            out = m._normalize_out(m._decode(v, i), self.__dict__.pop("_norm_state", None))
            return self.hook_sae_output(out.reshape(*lead, m.d_in).to(x.dtype))

    return PyinterpSAE
