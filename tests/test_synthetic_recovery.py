"""Synthetic ground truth for every dictionary kind (pyinterp.sae.synthetic): each recovers its
planted directions (>= 90% at cosine > 0.9) at small scale, JumpReLU reaches its target L0,
and an untrained dictionary does not (so the measure can fail). Full-scale figures:
benchmarks/RESULTS.md (``python -m pyinterp.sae.synthetic --scale full``)."""
import pytest
import torch

from pyinterp.sae import synthetic as S
from sae_testing import one_thread  # noqa: F401  (autouse: one torch thread)


@pytest.mark.parametrize("kind", S.KINDS)
def test_recovers_planted_features(kind):
    r = S.run(kind, "tiny")
    assert r["recovered"] >= 0.9 and r["mean_max_cosine"] >= 0.95, r
    if kind == "jumprelu_sae":  # the quadratic L0 penalty's target is the planted L0 (3)
        assert abs(r["l0"] - r["expected_l0"]) <= 0.5, r


@pytest.mark.parametrize("kind", ["topk_sae", "transcoder", "crosscoder", "clt"])
def test_untrained_dictionaries_do_not_recover(kind):
    s = S.SCALES["tiny"]
    task = S.make_task(kind, n_features=s["n_features"], d=s["d"], seed=0)
    d = S.make_dictionary(kind, n_features=s["n_features"], d=s["d"], seed=0)
    assert S.recovery(task.truth, task.learned(d))["recovered"] < 0.2


def test_recovery_measure():
    truth = torch.eye(4)
    learned = torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 1.0, 1.0], [0, 0, 0, -1.0]])
    r = S.recovery(truth, learned)
    assert r["recovered"] == 0.5 and r["mean_max_cosine"] == pytest.approx((2 + 2 ** -0.5 * 2) / 4)
