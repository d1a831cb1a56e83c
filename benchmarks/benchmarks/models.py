"""asv: training step and forward of the default small model (2 layers, d_model 256, SoLU+LN
MLP, d_vocab 4096; B=8, T=256), pyinterp Transformer vs the same model from plain torch
modules; and the forward of the GELU variant (no pyinterp kernel: hook-point overhead).
CPU, 2 threads, float32."""
import torch


class _Base:
    params = (["pyinterp", "plain_torch"], ["solu_ln", "gelu"])
    param_names = ["impl", "act_fn"]
    timeout = 600
    number = 1
    repeat = 5

    def setup(self, impl, act_fn):
        torch.set_num_threads(2)
        from pyinterp.bench._plain_transformer import PlainTransformer
        from pyinterp.bench.cases_models import default_config
        from pyinterp.models import Transformer

        self.tokens = torch.randint(0, 4096, (8, 256), generator=torch.Generator().manual_seed(0))
        model = Transformer(default_config(act_fn))
        self.model = model if impl == "pyinterp" else PlainTransformer.like(model)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)


class TrainStep(_Base):
    def setup(self, impl, act_fn):
        super().setup(impl, act_fn)
        self.time_train_step(impl, act_fn)  # warm-up (allocations, optimizer state)

    def time_train_step(self, impl, act_fn):
        self.opt.zero_grad(set_to_none=True)
        self.model.loss(self.tokens).backward()
        self.opt.step()


class Forward(_Base):
    def time_forward(self, impl, act_fn):
        with torch.no_grad():
            self.model(self.tokens)


class HookPointCall:
    """One call of an unhooked HookPoint (the per-hook cost when nothing is registered)."""

    def setup(self):
        from pyinterp.models.hooks import HookPoint

        self.hp, self.x = HookPoint(), torch.zeros(1)

    def time_call_1000(self):
        hp, x = self.hp, self.x
        for _ in range(1000):
            hp(x)
