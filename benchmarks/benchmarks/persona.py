"""asv: persona projections, pyinterp.ops.persona_project (fused, in place) vs a Python loop of
per-layer einsums + masked means vs one plain read (hidden.sum()). CPU, 2 threads, float32,
L=24, B=16, T=512, D=1024, P=8 (the hidden states, 805 MB, are allocated once per process)."""
import torch

_CACHE = {}


def _inputs():
    if "h" not in _CACHE:
        g = torch.Generator().manual_seed(0)
        _CACHE["h"] = torch.randn(24, 16, 512, 1024, generator=g)
        _CACHE["v"] = torch.randn(24, 8, 1024, generator=g)
        _CACHE["m"] = torch.ones(16, 512, dtype=torch.bool)
    return _CACHE["h"], _CACHE["v"], _CACHE["m"]


class PersonaProject:
    params = (["pyinterp", "torch_loop", "hidden_sum"],)
    param_names = ["impl"]
    timeout = 900
    number = 1
    repeat = 5

    def setup(self, impl):
        torch.set_num_threads(2)
        from pyinterp import ops
        from pyinterp.bench.cases_persona import loop_baseline

        h, v, m = _inputs()
        layers = list(h.unbind(0))
        if impl == "pyinterp":
            self.fn = lambda: ops.persona_project(layers, v, m, "mean")
        elif impl == "torch_loop":
            self.fn = lambda: loop_baseline(layers, v, m)
        else:
            self.fn = lambda: h.sum()
        self.fn()

    def time_project(self, impl):
        self.fn()

    def peakmem_project(self, impl):
        self.fn()


class MonitorOverhead:
    """A small transformer's forward pass with / without a ProjectionMonitor on every layer."""

    params = ([False, True],)
    param_names = ["monitored"]
    number = 1
    repeat = 7

    def setup(self, monitored):
        torch.set_num_threads(2)
        from pyinterp.models import Transformer, TransformerConfig
        from pyinterp.persona import ProjectionMonitor

        cfg = TransformerConfig(n_layers=8, d_model=256, n_heads=8, d_vocab=4096, n_ctx=512,
                                act_fn="gelu")
        self.model = Transformer(cfg).eval()
        self.tokens = torch.randint(0, cfg.d_vocab, (8, 256))
        self.mon = ProjectionMonitor(self.model, torch.randn(8, cfg.d_model)) if monitored else None

    def time_forward(self, monitored):
        with torch.no_grad():
            if self.mon is None:
                self.model(self.tokens)
            else:
                self.mon.reset()
                with self.mon:
                    self.model(self.tokens)
