"""asv: one TopK SAE training step (forward, backward, Adam), pyinterp sparse ops vs the dense
pure-torch module with the same maths. CPU, 2 threads, float32."""
import torch


class SAETrainStep:
    params = (["pyinterp", "torch_dense"],)
    param_names = ["impl"]
    timeout = 600
    number = 1
    repeat = 5

    def setup(self, impl):
        torch.set_num_threads(2)
        from pyinterp.sae import TopKSAE
        from pyinterp.sae.reference import DenseTopKSAE

        N, d_in, d_sae, k = 4096, 512, 16384, 32
        self.x = torch.randn(N, d_in, generator=torch.Generator().manual_seed(0))
        sae = TopKSAE(d_in, d_sae, k=k, seed=0)
        if impl == "pyinterp":
            self.module, self.loss = sae, lambda x: sae.loss(x).total
        else:
            dense = DenseTopKSAE.like(sae)
            self.module, self.loss = dense, dense.loss
        self.opt = torch.optim.Adam(self.module.parameters(), lr=1e-5)
        self.time_step(impl)  # warm-up (allocations, Adam state)

    def time_step(self, impl):
        self.opt.zero_grad(set_to_none=True)
        self.loss(self.x).backward()
        self.opt.step()
