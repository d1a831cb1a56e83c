"""pyinterp.sae trainer: exact resume, NaN stop, several dictionaries, checkpoint errors."""
import json

import pytest
import torch

from pyinterp._files import atomic_write_json
from pyinterp.sae import (
    ActivationStore,
    BatchTopKSAE,
    CorruptFileError,
    NonFiniteError,
    ReLUSAE,
    SAETrainer,
    TopKSAE,
    TrainConfig,
    collect,
    train,
)
from pyinterp.sae.schedule import coefficient_factor, lr_factor
from sae_testing import one_thread, sparse_data  # noqa: F401  (one_thread: autouse)


def _two_hook_batches(n=24, rows=32):
    out = []
    for i in range(n):
        a = sparse_data(rows, 16, seed=i)
        out.append({"h.a": a, "h.b": a[:, :8] * 2 - 0.1})
    return out


def _saes():
    return {
        "topk": TopKSAE(16, 48, k=3, seed=0, hook_name="h.a", aux_k=4),
        "btk": BatchTopKSAE(16, 32, k=2, seed=1, hook_name="h.a"),
        "relu": ReLUSAE(8, 24, seed=2, hook_name="h.b", l1_coefficient=0.5),
    }


def _cfg(root, **kw):
    base = dict(steps=14, lr=3e-3, warmup_steps=3, decay_fraction=0.3, l1_warmup_steps=4,
                grad_clip=0.5, checkpoint_every=4, checkpoint_dir=str(root), log_every=2,
                dead_window_tokens=64, aux_check_every=2, resample_every=5, progress=False,
                init_batches=2)
    base.update(kw)
    return TrainConfig(**base)


def _state(trainer):
    out = {}
    for name, sae in trainer.saes.items():
        for k, v in sae.state_dict().items():
            out[f"{name}.{k}"] = v.clone()
        for pid, st in trainer.optimizers[name].state_dict()["state"].items():
            for k, v in st.items():
                out[f"{name}.opt{pid}.{k}"] = v.clone()
        out[f"{name}.since_fired"] = trainer.since_fired[name].clone()
        out[f"{name}.fire_counts"] = trainer.fire_counts[name].clone()
    return out


def test_interrupted_and_resumed_run_equals_uninterrupted_bit_for_bit(tmp_path):
    collect(tmp_path / "acts", _two_hook_batches(), shard_rows=64, progress=False)

    def store():
        return ActivationStore(tmp_path / "acts", batch_size=24, seed=5, mix_shards=2)

    full = SAETrainer(_saes(), store(), _cfg(tmp_path / "full"))
    full.run()
    assert full.step == 14

    class Crash(Exception):
        pass

    def crash_at_10(trainer, rec):
        if trainer.step == 10:
            raise Crash()

    part = SAETrainer(_saes(), store(), _cfg(tmp_path / "part"), callback=crash_at_10)
    with pytest.raises(Crash):
        part.run()
    assert json.loads((tmp_path / "part" / "latest.json").read_text())["step"] == 8
    resumed = SAETrainer.resume(tmp_path / "part", store())
    assert resumed.step == 8 and resumed.initialised
    resumed.run()
    a, b = _state(full), _state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["step"] for r in resumed.history] == [r["step"] for r in full.history]
    # the aux loss and resampling actually ran in this scenario
    assert any(r["topk"]["aux"] > 0 for r in full.history)


def test_nan_in_activations_stops_and_keeps_last_good_checkpoint(tmp_path):
    good = [sparse_data(32, 16, seed=i) for i in range(12)]
    bad = list(good)
    bad[7] = bad[7].clone()
    bad[7][3, 5] = float("nan")
    sae = TopKSAE(16, 32, k=3, seed=0)
    cfg = TrainConfig(steps=10, lr=1e-3, checkpoint_every=2, checkpoint_dir=str(tmp_path),
                      progress=False, log_every=1)
    trainer = SAETrainer(sae, bad, cfg)
    with pytest.raises(NonFiniteError, match=r"activations.*step 7.*step_00000006"):
        trainer.run()
    assert json.loads((tmp_path / "latest.json").read_text())["step"] == 6
    assert not (tmp_path / "step_00000007").exists()
    for p in sae.parameters():          # the bad batch never reached the optimiser
        assert torch.isfinite(p).all()
    with pytest.warns(UserWarning, match="replaying 7 batches"):
        resumed = SAETrainer.resume(tmp_path, good)
    assert resumed.step == 6
    resumed.run()
    assert resumed.step == 10


def test_nan_in_loss_before_any_checkpoint(tmp_path):
    sae = TopKSAE(16, 32, k=3, seed=0)
    with torch.no_grad():
        sae.W_dec[:] = float("inf")
    trainer = SAETrainer(sae, [sparse_data(16, 16, seed=i) for i in range(4)],
                         TrainConfig(steps=3, checkpoint_dir=str(tmp_path), progress=False,
                                     normalize_activations=False, b_dec_init=None))
    with pytest.raises(NonFiniteError, match="non-finite loss.*no checkpoint had been written"):
        trainer.run()
    assert not (tmp_path / "latest.json").exists()


def test_several_dictionaries_train_as_if_alone(tmp_path):
    data = [sparse_data(32, 16, seed=i) for i in range(10)]
    cfg = TrainConfig(steps=8, lr=2e-3, progress=False, init_batches=1, aux_check_every=1,
                      dead_window_tokens=32)
    together = SAETrainer({"a": TopKSAE(16, 32, k=2, seed=0), "b": TopKSAE(16, 64, k=4, seed=1)},
                          data, cfg)
    together.run()
    alone_a = train(TopKSAE(16, 32, k=2, seed=0), data, cfg)
    alone_b = train(TopKSAE(16, 64, k=4, seed=1), data, cfg)
    for name, alone in (("a", alone_a), ("b", alone_b)):
        for k, v in alone.saes["sae"].state_dict().items():
            assert torch.equal(together.saes[name].state_dict()[k], v), (name, k)
    assert together.optimizers["a"] is not together.optimizers["b"]


def test_training_learns_and_normalises(tmp_path):
    data = [sparse_data(128, 16, seed=i) * 7.0 for i in range(81)]
    sae = TopKSAE(16, 64, k=4, seed=0)
    tr = train(sae, data, steps=80, lr=4e-3, log_every=10, progress=False)
    sample = data[0]
    assert abs(float((sample * sae.input_scale).pow(2).sum(1).mean()) / 16 - 1) < 1e-4
    fvus = [r["sae"]["fvu"] for r in tr.history]
    assert fvus[-1] < 0.5 * fvus[0]
    assert tr.history[-1]["sae"]["l0"] <= 4


def test_schedules():
    assert lr_factor(0, 100, warmup=10) == pytest.approx(0.1)
    assert lr_factor(9, 100, warmup=10) == pytest.approx(1.0)
    assert lr_factor(50, 100, warmup=10, decay_fraction=0.2) == 1.0
    assert lr_factor(99, 100, decay_fraction=0.2) == pytest.approx(0.0)
    assert lr_factor(89, 100, decay_fraction=0.2) == pytest.approx(0.5)
    assert coefficient_factor(4, 10) == pytest.approx(0.5)
    assert coefficient_factor(20, 10) == 1.0


def test_corrupt_or_incomplete_checkpoint_names_the_file(tmp_path):
    data = [sparse_data(16, 16, seed=i) for i in range(8)]
    cfg = TrainConfig(steps=3, checkpoint_dir=str(tmp_path), progress=False)
    SAETrainer(TopKSAE(16, 32, k=2, seed=0), data, cfg).run()
    step = tmp_path / "step_00000003"
    w = step / "sae_sae.safetensors"
    raw = w.read_bytes()
    w.write_bytes(raw[:-8])
    with pytest.raises(CorruptFileError, match=r"sae_sae\.safetensors is corrupt"):
        SAETrainer.resume(tmp_path, data)
    w.write_bytes(raw)
    (step / "optim_sae.safetensors").unlink()
    with pytest.raises(CorruptFileError, match=r"optim_sae\.safetensors is missing"):
        SAETrainer.resume(tmp_path, data)
    meta = json.loads((step / "trainer.json").read_text())
    meta["step"] = 2  # an edit (or a bit flip) in trainer.json: its own checksum catches it
    (step / "trainer.json").write_text(json.dumps(meta))
    with pytest.raises(CorruptFileError, match=r"trainer\.json was damaged or edited"):
        SAETrainer.resume(tmp_path, data)
    del meta["saes"]  # a forged file with a valid checksum: the field check catches it
    atomic_write_json(step / "trainer.json", {k: v for k, v in meta.items() if k != "sha256"},
                      checksum=True)
    with pytest.raises(CorruptFileError, match=r"trainer\.json is missing the field 'saes'"):
        SAETrainer.resume(tmp_path, data)
    with pytest.raises(FileNotFoundError, match="no checkpoint under"):
        SAETrainer.resume(tmp_path / "nothing", data)


def test_bad_trainer_arguments():
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        TrainConfig(steps=3, checkpoint_every=1)
    with pytest.raises(TypeError, match="dictionary"):
        SAETrainer({"a": torch.nn.Linear(2, 2)}, [], TrainConfig(steps=1))
    sae = TopKSAE(16, 32, k=2, hook_name="h")
    tr = SAETrainer(sae, [{"other": torch.zeros(4, 16)}], TrainConfig(steps=1, progress=False))
    with pytest.raises(KeyError, match="no activations for dictionary 'sae'"):
        tr.run()
    tr = SAETrainer(TopKSAE(16, 32, k=2), [torch.zeros(4, 15)], TrainConfig(steps=1, progress=False))
    with pytest.raises(ValueError, match=r"shape \(N, 16\)"):
        tr.run()
    tr = SAETrainer(TopKSAE(16, 32, k=2), [torch.randn(4, 16)], TrainConfig(steps=2, progress=False,
                                                                             init_batches=1))
    with pytest.raises(RuntimeError, match="ran out after 1 batches"):
        tr.run()
    tr = SAETrainer(TopKSAE(16, 32, k=2), [torch.zeros(4, 16)] * 3, TrainConfig(steps=2, progress=False))
    with pytest.raises(ValueError, match="cannot normalise activations"):
        tr.run()


# ------------------------------------------------------------------------------------------
# optimizer in backward (pyinterp.sae.optim.in_backward)


def _every_kind():
    from pyinterp.sae import (
        Crosscoder,
        CrossLayerTranscoder,
        JumpReLUSAE,
        MatryoshkaTopKSAE,
        Transcoder,
    )

    return {
        "topk": TopKSAE(16, 48, k=3, seed=0, hook_name="h.a", aux_k=4),
        "btk": BatchTopKSAE(16, 32, k=2, seed=1, hook_name="h.a"),
        # unit decoder: the gradient projection before W_dec's update, renormalised after
        "relu": ReLUSAE(8, 24, seed=2, hook_name="h.c", l1_coefficient=0.5, decoder_norm="unit"),
        "jr": JumpReLUSAE(16, 32, seed=3, hook_name="h.b", init_l0=4.0, l0_coefficient=0.1),
        "mat": MatryoshkaTopKSAE(16, 32, k=3, matryoshka_widths=[8, 32], seed=4, hook_name="h.b"),
        "tc": Transcoder(16, 32, activation="topk", k=3, skip=True, seed=5, hook_name="h.a",
                         hook_name_out="h.b"),
        "cc": Crosscoder(2, 16, 32, activation="relu", l1_coefficient=0.5, seed=6,
                         hook_names=["h.a", "h.b"]),
        "clt": CrossLayerTranscoder(2, 16, 16, activation="jumprelu", init_l0=4.0, seed=7,
                                    hook_names=["h.a", "h.b"], hook_names_out=["h.b", "h.a"]),
        "clt_topk": CrossLayerTranscoder(2, 16, 16, activation="topk", k=3, seed=8, aux_k=4,
                                         hook_names=["h.a", "h.b"], hook_names_out=["h.b", "h.a"]),
    }


def _every_kind_batches(n=16, rows=32):
    out = []
    for i in range(n):
        a, b = sparse_data(rows, 16, seed=i), sparse_data(rows, 16, seed=500 + i)
        out.append({"h.a": a, "h.b": b, "h.c": a[:, :8] * 2 - 0.1 + 0.3 * b[:, :8]})
    return out


def test_optimizer_in_backward_gives_the_same_bits_and_resumes_in_either_mode(tmp_path):
    data = _every_kind_batches()
    base = dict(steps=10, lr=3e-3, warmup_steps=2, decay_fraction=0.3, l1_warmup_steps=3,
                grad_clip=None, dead_window_tokens=64, aux_check_every=2, resample_every=4,
                progress=False, log_every=2, init_batches=2)
    normal = SAETrainer(_every_kind(), data, TrainConfig(**base))
    normal.run()
    fused = SAETrainer(_every_kind(), data, TrainConfig(**base, optimizer_in_backward=True))
    for opt in fused.optimizers.values():   # every update goes through the backward hooks
        opt.step = lambda *a, **k: pytest.fail("optimizer.step() called in backward mode")
    fused.run()

    class Crash(Exception):
        pass

    def crash_at_6(trainer, rec):
        if trainer.step == 6:
            raise Crash()

    part = SAETrainer(_every_kind(), data,
                      TrainConfig(**base, optimizer_in_backward=True, checkpoint_every=4,
                                  checkpoint_dir=str(tmp_path)), callback=crash_at_6)
    with pytest.raises(Crash):
        part.run()
    with pytest.warns(UserWarning, match="replaying 6 batches"):  # a list source
        resumed = SAETrainer.resume(tmp_path, data, optimizer_in_backward=False)
    assert resumed.step == 4
    resumed.run()
    want = _state(normal)
    for other in (fused, resumed):
        got = _state(other)
        assert got.keys() == want.keys()
        for k in want:
            assert torch.equal(got[k], want[k]), k
        assert all(p.grad is None for s in other.saes.values() for p in s.parameters())
    # the paths that touch gradients or optimizer state ran: AuxK, resampling, projection
    assert any(r["topk"]["aux"] > 0 for r in normal.history)
    assert any(r["clt_topk"]["aux"] > 0 for r in normal.history)
    assert [r["relu"]["loss"] for r in fused.history] == [r["relu"]["loss"] for r in normal.history]


def test_crosscoder_checkpoints_keep_the_stacked_decoder_layout(tmp_path):
    """The crosscoder trains L per-layer decoders, but its checkpoint files hold them as they
    always have: one W_dec (L, d_sae, d) and its Adam moments as parameter 2 of 4 (so
    checkpoints written before the per-layer layout resume, and the other way round)."""
    from safetensors.torch import load_file

    from pyinterp.sae import Crosscoder

    L, d, m = 3, 16, 32
    cc = Crosscoder(L, d, m, activation="jumprelu", init_l0=4.0, seed=0,
                    hook_names=["h.a", "h.b", "h.c"])
    data = [{"h.a": sparse_data(32, 16, seed=i), "h.b": sparse_data(32, 16, seed=50 + i),
             "h.c": sparse_data(32, 16, seed=90 + i)} for i in range(4)]
    tr = SAETrainer({"cc": cc}, data, TrainConfig(steps=3, lr=1e-2, checkpoint_every=3,
                                                  checkpoint_dir=str(tmp_path), progress=False,
                                                  init_batches=1, grad_clip=None,
                                                  optimizer_in_backward=True))
    tr.run()
    step = tr.last_checkpoint
    w = load_file(step / "sae_cc.safetensors")
    assert w["W_dec"].shape == (L, m, d)
    assert torch.equal(w["W_dec"], torch.stack([p.detach() for p in cc.W_dec]))
    o = load_file(step / "optim_cc.safetensors")
    shapes = {"0": (L, d, m), "1": (m,), "2": (L, m, d), "3": (L, d), "4": (m,)}  # W_enc .. threshold
    assert {k: tuple(v.shape) for k, v in o.items()} == {
        **{f"{i}.{key}": s for i, s in shapes.items() for key in ("exp_avg", "exp_avg_sq")},
        **{f"{i}.step": () for i in shapes}}
    state = tr.optimizers["cc"].state
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(o[f"2.{key}"], torch.stack([state[p][key] for p in cc.W_dec]))
        assert torch.equal(o[f"3.{key}"], state[cc.b_dec][key])
    meta = json.loads((step / "trainer.json").read_text())["saes"]["cc"]["optimizer"]
    assert meta["param_groups"][0]["params"] == [0, 1, 2, 3, 4]
    with pytest.warns(UserWarning, match="replaying 4 batches"):  # init + 3 steps
        back = SAETrainer.resume(tmp_path, data)
    got = back.optimizers["cc"].state
    for p, q in zip(back.saes["cc"].parameters(), cc.parameters()):
        assert torch.equal(p, q) and all(torch.equal(got[p][k], state[q][k]) for k in state[q])


def test_stacked_optimizer_state_round_trips_and_refuses_what_it_cannot_store():
    from pyinterp.sae.checkpoint import split_state, stack_state

    a, b, c = (torch.nn.Parameter(torch.randn(2, 3)) for _ in range(3))
    opt = torch.optim.Adam([c, a, b], lr=0.1)
    (a.sum() + 2 * b.sum() + c.pow(2).sum()).backward()
    opt.step()
    sd = opt.state_dict()
    layout = [[1, 2], [0]]                 # a, b stacked first, then c
    stored = stack_state(sd, layout)
    assert stored["param_groups"][0]["params"] == [0, 1]
    assert stored["state"][0]["exp_avg"].shape == (2, 2, 3)
    back = split_state(stored, layout)
    assert back["param_groups"][0]["params"] == [0, 1, 2]
    for pid, st in sd["state"].items():
        assert all(torch.equal(back["state"][pid][k], v) for k, v in st.items())
    sd["state"][2]["step"] = sd["state"][2]["step"] + 1
    with pytest.raises(ValueError, match="'step' differs"):
        stack_state(sd, layout)
    with pytest.raises(ValueError, match="names entries"):
        split_state(stored, [[0, 1, 2]])
    bad = {"state": {0: dict(stored["state"][0])}, "param_groups": [{"params": [0]}]}
    with pytest.raises(ValueError, match="needs 3 stacked"):
        split_state(bad, [[0, 1, 2]])


def test_optimizer_in_backward_refuses_what_needs_every_gradient():
    with pytest.raises(ValueError, match="optimizer_in_backward.*grad_clip=None"):
        TrainConfig(steps=3, optimizer_in_backward=True)   # grad_clip defaults to 1.0
    from pyinterp.distributed import DataParallelSAETrainer

    with pytest.raises(ValueError, match="does not support optimizer_in_backward"):
        DataParallelSAETrainer(TopKSAE(16, 32, k=2), [],
                               TrainConfig(steps=3, grad_clip=None, optimizer_in_backward=True))


def test_run_keeps_reconstructions_only_for_the_steps_it_logs():
    """run() drops each loss's x / x_hat before backward in the steps it does not log (so
    backward can free them); logged steps and direct train_step calls keep them."""
    seen = []

    class Spy(SAETrainer):
        def train_step(self, batch):
            out = super().train_step(batch)
            seen.append(out["sae"].x_hat is not None and out["sae"].x is not None)
            return out

    data = [sparse_data(32, 16, seed=i) for i in range(10)]
    tr = Spy(TopKSAE(16, 32, k=2, seed=0), data,
             TrainConfig(steps=7, log_every=3, progress=False, init_batches=1))
    tr.run()
    assert seen == [False, False, True, False, False, True, True]
    assert [r["step"] for r in tr.history] == [3, 6, 7]
    assert all(0 <= r["sae"]["fvu"] < 2 for r in tr.history)
    assert tr.train_step(data[9])["sae"].x_hat is not None


def test_logged_fvu_per_output_and_overall():
    from pyinterp.sae.trainer import _fvu

    g = torch.Generator().manual_seed(0)
    x, r = torch.randn(3, 20, 5, generator=g), torch.randn(3, 20, 5, generator=g)
    xd, rd = x.double(), r.double()
    num = (xd - rd).pow(2).sum((1, 2))
    den = (xd - xd.mean(1, keepdim=True)).pow(2).sum((1, 2))
    out = _fvu(x, r)
    assert out["fvu"] == pytest.approx(float(num.sum() / den.sum()), rel=1e-12)
    assert out["fvu_per_output"] == pytest.approx((num / den).tolist(), rel=1e-12)
    single = _fvu(x[0], r[0])
    assert single == {"fvu": pytest.approx(float(num[0] / den[0]), rel=1e-12)}
