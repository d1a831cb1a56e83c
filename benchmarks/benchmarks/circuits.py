"""asv: the attribution graph of one prompt (the circuits paper's quick shape with random
weights: 2 layers, d_model 64, a CLT of 512 TopK features per layer, k=16; see
pyinterp.bench.cases_circuits): pyinterp.circuits.attribute against the dense reference
(circuit-tracer's method: dense adjacency, one backward pass per target). CPU, 2 threads."""
import torch


class _Base:
    timeout = 900
    number = 1
    repeat = 3

    def setup(self, T):
        torch.set_num_threads(2)
        from pyinterp import circuits
        from pyinterp.bench.cases_circuits import build

        self.model, clt, self.tokens = build(T)
        self.dic = circuits.as_dictionary(clt)


class Streamed(_Base):
    params = ([64, 256, 1024],)
    param_names = ["T"]

    def time_attribute(self, T):
        from pyinterp import circuits

        circuits.attribute(self.model, self.dic, self.tokens)

    def peakmem_attribute(self, T):
        from pyinterp import circuits

        circuits.attribute(self.model, self.dic, self.tokens)


class Dense(_Base):
    params = ([64],)
    param_names = ["T"]
    repeat = 1

    def time_dense_reference(self, T):
        from pyinterp.circuits.reference import dense_attribution

        dense_attribution(self.model, self.dic, self.tokens, dtype=torch.float32)

    def peakmem_dense_reference(self, T):
        from pyinterp.circuits.reference import dense_attribution

        dense_attribution(self.model, self.dic, self.tokens, dtype=torch.float32)
