"""asv: attention statistics, pyinterp.ops.attention_stats (online softmax, O(T) memory) vs the
materialising torch path (softmax(QK^T/sqrt(d)) then masked means). CPU, 2 threads, float32,
B=1, H=8, d_head=64."""
import math

import torch


class AttentionStats:
    params = (["pyinterp", "torch_materialising"], [512, 2048])
    param_names = ["impl", "T"]
    timeout = 600
    number = 1
    repeat = 5

    def setup(self, impl, T):
        torch.set_num_threads(2)
        from pyinterp import ops
        from pyinterp.bench.cases_attention import RULES, materialising_stats

        g = torch.Generator().manual_seed(0)
        q = torch.randn(1, 8, T, 64, generator=g)
        k = torch.randn(1, 8, T, 64, generator=g)
        tokens = torch.randint(0, 1000, (1, T), generator=g)
        scale = 1 / math.sqrt(64)
        if impl == "pyinterp":
            self.fn = lambda: ops.attention_stats(q, k, tokens, RULES, scale=scale)
        else:
            self.fn = lambda: materialising_stats(q, k, tokens, scale)
        self.fn()  # warm-up

    def time_stats(self, impl, T):
        self.fn()

    def peakmem_stats(self, impl, T):
        self.fn()


class HeadScores:
    """pyinterp.attention.head_scores vs TransformerLens run_with_cache + detect_head."""

    params = (["pyinterp", "transformer_lens"],)
    param_names = ["impl"]
    timeout = 600
    number = 1
    repeat = 3

    def setup(self, impl):
        torch.set_num_threads(2)
        try:
            import transformer_lens as tl
            from transformer_lens.head_detector import detect_head
        except ImportError:
            raise NotImplementedError("transformer-lens is not installed")
        import warnings

        from pyinterp import attention

        T = 512
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = tl.HookedTransformer(tl.HookedTransformerConfig(
                n_layers=2, d_model=512, n_heads=8, d_head=64, n_ctx=T + 1, d_vocab=1000,
                act_fn="relu", attn_only=True, seed=0)).eval()
        tokens = torch.randint(0, 1000, (1, T), generator=torch.Generator().manual_seed(0))
        names = ("previous_token_head", "duplicate_token_head", "induction_head")

        def tl_path():
            with torch.no_grad():
                _, cache = model.run_with_cache(tokens, remove_batch_dim=True)
            model.to_tokens = lambda *a, **kw: tokens
            return [detect_head(model, "-", n, cache=cache) for n in names]

        self.fn = (lambda: attention.head_scores(model, tokens)) if impl == "pyinterp" else tl_path
        self.fn()

    def time_head_scores(self, impl):
        self.fn()
