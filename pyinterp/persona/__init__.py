"""Persona vectors (Chen et al. 2025): monitoring and controlling character traits of a
language model through directions in its residual stream.

    from pyinterp import persona
    mon = persona.ProjectionMonitor(model, vectors, layers=[6])       # streaming projections
    with persona.steer(model, v, layer=6, alpha=2.0, positions="response"):
        model.generate(prompts)
"""
from pyinterp.persona.monitor import ProjectionMonitor
from pyinterp.persona.steering import ablate, steer

__all__ = ["ProjectionMonitor", "ablate", "steer"]
