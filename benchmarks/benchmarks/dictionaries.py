"""asv: one training step (forward, backward, Adam) of each dictionary kind of issue 17
(JumpReLU, Matryoshka, transcoder, crosscoder, CLT): pyinterp's sparse kernels vs the same maths
in dense torch. Shapes, modules and the torch formulations come from
pyinterp.bench.cases_dictionaries (defined once). CPU, 2 threads, float32."""
import torch


class DictionaryTrainStep:
    params = (["jumprelu", "matryoshka", "transcoder", "crosscoder", "clt"],
              ["pyinterp", "torch_dense"])
    param_names = ["kind", "impl"]
    timeout = 900
    number = 1
    repeat = 3

    def setup(self, kind, impl):
        torch.set_num_threads(2)
        from pyinterp.bench import cases_dictionaries as C

        mod, self.x = C.build(kind, C.FULL)
        loss = (lambda *t: mod.loss(*t).total) if impl == "pyinterp" else C.torch_loss(kind, mod, False)
        self.step = C.train_step(mod.parameters(), loss, self.x)
        self.step()  # warm-up (allocations, Adam state)

    def time_step(self, kind, impl):
        self.step()
