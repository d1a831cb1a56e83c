"""asv: pyinterp as a drop-in backend of peer libraries (pyinterp.bench.cases_integrations has
the full comparison table). A SAELens training step per architecture, plain vs
pyinterp.sae.accelerate(); a TransformerLens SoLU-LN model's training step, plain vs
pyinterp.integrations.transformer_lens.apply(). CPU, 2 threads, float32."""
import torch


class SAELensTrainStep:
    params = (["topk", "batchtopk", "jumprelu", "standard"], ["sae_lens", "accelerated"])
    param_names = ["architecture", "impl"]
    timeout = 900
    number = 1
    repeat = 3

    def setup(self, architecture, impl):
        torch.set_num_threads(2)
        from pyinterp.bench import cases_integrations as C

        sl = C._sae_lens()
        if sl is None:
            raise NotImplementedError("sae-lens is not installed")
        N, d_in, d_sae = C.FULL
        x = torch.randn(N, d_in, generator=torch.Generator().manual_seed(0))
        sae, _ = C._training_saes(sl, architecture, d_in, d_sae, x)
        if impl == "accelerated":
            from pyinterp.sae import accelerate

            accelerate(sae)
        self.step = C._train_step(sae, x, None)
        self.step()  # warm-up (allocations, Adam state)

    def time_step(self, architecture, impl):
        self.step()


class TransformerLensSoLUTrainStep:
    params = (["transformer_lens", "applied"],)
    param_names = ["impl"]
    timeout = 600
    number = 1
    repeat = 3

    def setup(self, impl):
        torch.set_num_threads(2)
        import transformer_lens as tl

        cfg = tl.HookedTransformerConfig(n_layers=4, d_model=512, n_heads=8, d_head=64, d_mlp=2048,
                                         d_vocab=4096, n_ctx=256, act_fn="solu_ln", seed=0)
        self.model = tl.HookedTransformer(cfg)
        if impl == "applied":
            from pyinterp.integrations import transformer_lens as ptl

            ptl.apply(self.model)
        self.tokens = torch.randint(0, 4096, (8, 256), generator=torch.Generator().manual_seed(0))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-6)
        self.time_step(impl)

    def time_step(self, impl):
        self.opt.zero_grad(set_to_none=True)
        self.model(self.tokens, return_type="loss").backward()
        self.opt.step()
