"""Persona vectors (Chen et al. 2025): monitoring and controlling character traits of a
language model through directions in its residual stream. Works on pyinterp's own models and on
Hugging Face / TransformerLens models through the adapters (hook ``blocks.{l}.hook_resid_post``).

    from pyinterp import persona
    trait = persona.load_trait("optimistic")                     # or a JSON file (validated)
    pv = persona.extract_persona_vectors(model, trait, n_samples=4)   # generate, judge, filter
    layer = persona.choose_layer(model, pv, trait, alpha=2.0)     # by steering effect
    with persona.steer(model, pv.vector(layer), layer, alpha=2.0, positions="response"):
        model.generate(prompts)
    res = persona.monitor(model, pv, trait, layer)                # res.correlation
    scr = persona.projection_difference(model, dataset, pv.vector(layer), layer)
    persona.compare_finetuning(model, samples, pv, layer, trait)   # preventative steering

Extraction and monitoring reduce activations on the device with the fused ops
(:func:`pyinterp.ops.persona_pool`, :func:`pyinterp.ops.persona_project`); nothing asks the
model for all its hidden states.
"""
from pyinterp.persona.activations import mean_activations, projections
from pyinterp.persona.data import Sample, generate_responses
from pyinterp.persona.evaluate import (
    MonitorResult,
    ScreeningResult,
    choose_layer,
    last_prompt_projection,
    monitor,
    pearson,
    projection_difference,
    steering_effect,
    trait_score,
)
from pyinterp.persona.extract import (
    EmptyFilteredSetError,
    PersonaVectors,
    extract_persona_vectors,
    filter_responses,
    persona_vectors_from_samples,
)
from pyinterp.persona.judge import ClassifierJudge, LexiconJudge, coherence_score
from pyinterp.persona.preventative import compare_finetuning, finetune
from pyinterp.persona.projection_monitor import ProjectionMonitor
from pyinterp.persona.steering import ablate, steer
from pyinterp.persona.trait import (
    JSON_SCHEMA,
    TraitSpec,
    TraitSpecError,
    builtin_trait,
    builtin_traits,
    load_trait,
    validate_trait,
)

__all__ = [
    "ClassifierJudge", "EmptyFilteredSetError", "JSON_SCHEMA", "LexiconJudge", "MonitorResult",
    "PersonaVectors", "ProjectionMonitor", "Sample", "ScreeningResult", "TraitSpec", "TraitSpecError", "ablate",
    "builtin_trait", "builtin_traits", "choose_layer", "coherence_score", "compare_finetuning",
    "extract_persona_vectors", "filter_responses", "finetune", "generate_responses",
    "last_prompt_projection", "load_trait", "mean_activations", "monitor", "pearson",
    "persona_vectors_from_samples", "projection_difference", "projections", "steer",
    "steering_effect", "trait_score", "validate_trait",
]
