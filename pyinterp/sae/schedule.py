"""Learning-rate and sparsity-coefficient schedules: pure functions of the step (so a resumed
run computes exactly the values an uninterrupted one does)."""
from __future__ import annotations


def lr_factor(step: int, total: int, warmup: int = 0, decay_fraction: float = 0.2,
              final: float = 0.0) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based).

    Linear warm-up over ``warmup`` steps, constant, then linear decay to ``final`` over the
    last ``decay_fraction`` of ``total`` steps (Scaling Monosemanticity decays over the last 20%).
    """
    f = 1.0
    if warmup > 0 and step < warmup:
        f = (step + 1) / warmup
    decay_steps = int(round(total * decay_fraction))
    start = total - decay_steps
    if decay_steps > 0 and step >= start:
        frac = (step - start + 1) / decay_steps
        f *= 1.0 - (1.0 - final) * min(frac, 1.0)
    return f


def coefficient_factor(step: int, warmup: int = 0) -> float:
    """Sparsity-penalty multiplier: linear ramp from 0 to 1 over ``warmup`` steps
    (Scaling Monosemanticity ramps lambda over the first 5% of training)."""
    if warmup <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup)
