"""End to end on a tiny model: collect two hook points to disk, train a dictionary per hook
in one pass, evaluate (L0, FVU, loss recovered), save for SAELens and load back."""
import torch

import pyinterp.sae as psae
from pyinterp.sae import metrics


def test_model_to_dictionaries_to_metrics(tmp_path):
    from pyinterp.models import Transformer, TransformerConfig

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = Transformer(TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=64,
                                              n_ctx=16, act_fn="gelu", seed=0))
        g = torch.Generator().manual_seed(0)
        tokens = [torch.randint(0, 64, (4, 16), generator=g) for _ in range(12)]
        hooks = ["blocks.0.hook_resid_mid", "blocks.0.mlp.hook_post"]
        psae.collect(tmp_path / "acts", model, tokens, hook_names=hooks, shard_rows=128,
                     progress=False)
        store = psae.ActivationStore(tmp_path / "acts", batch_size=64, seed=0)
        saes = {"resid": psae.TopKSAE(16, 64, k=4, seed=0, hook_name=hooks[0]),
                "mlp": psae.ReLUSAE(64, 128, seed=0, hook_name=hooks[1], l1_coefficient=0.05)}
        trainer = psae.SAETrainer(saes, store, psae.TrainConfig(
            steps=40, lr=3e-3, log_every=20, progress=False, checkpoint_every=20,
            checkpoint_dir=str(tmp_path / "ckpt")))
        trainer.run()
        assert trainer.history[-1]["resid"]["fvu"] < trainer.history[0]["resid"]["fvu"]
        sae = saes["resid"].eval()
        ev = metrics.evaluate(sae, psae.ActivationStore(tmp_path / "acts", 64, epochs=1,
                                                        hook_names=[hooks[0]]))
        assert ev["l0"] <= 4 and 0 <= ev["fvu"] < 1
        # (an untrained model: the numbers mean nothing, the splicing plumbing is checked)
        lr = metrics.loss_recovered(model, tokens[:2], sae)
        expected = (lr["zero_ablation"] - lr["spliced"]) / (lr["zero_ablation"] - lr["clean"])
        assert abs(lr["loss_recovered"] - expected) < 1e-9
        assert lr["spliced"] != lr["clean"] and lr["zero_ablation"] != lr["clean"]
        sae.save(tmp_path / "out")
        back = psae.load(tmp_path / "out")
        x = next(iter(psae.ActivationStore(tmp_path / "acts", 32, hook_names=[hooks[0]])))
        torch.testing.assert_close(back(x), sae(x), atol=1e-5, rtol=1e-5)
    finally:
        torch.set_num_threads(n)
