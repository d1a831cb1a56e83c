"""Dictionary learning (sparse autoencoders) on pyinterp's sparse SAE ops.

    from pyinterp.sae import TopKSAE, SAETrainer, TrainConfig, ActivationStore
    sae = TopKSAE(d_in=512, d_sae=16384, k=32, hook_name="blocks.0.hook_resid_post")
    SAETrainer(sae, store, TrainConfig(steps=10_000, checkpoint_dir="runs/sae")).run()
    sae.save("out/sae")                  # SAELens layout: cfg.json + sae_weights.safetensors
    sae2 = pyinterp.sae.load("out/sae")  # also reads directories written by SAELens

Activations: ``collect(dir, model, token_batches, hook_names=[...])`` writes shards once and
``ActivationStore(dir, batch_size)`` streams them shuffled (resumable); or train straight from
the model in one pass with ``SAETrainer(saes, stream(model, token_batches, hook_names), cfg)``.
Several dictionaries (hook points or sizes) train together: pass ``{name: sae}``, each
dictionary reading the batch at its ``hook_name``, each with its own optimiser.

Architectures are registered by name (:func:`register_sae_class`, pyinterp/sae/registry.py);
files and :func:`build` find classes there. Modules: :class:`ReLUSAE` ("standard", L1 weighted by decoder norms; ``decoder_norm="unit"``
for Towards Monosemanticity's unit-norm decoder), :class:`TopKSAE`, :class:`BatchTopKSAE`,
:class:`JumpReLUSAE` (trained thresholds, step / quadratic / tanh L0 penalty),
:class:`MatryoshkaTopKSAE`, :class:`MatryoshkaBatchTopKSAE`. Each has ``encode(x) -> (values,
indices)``, ``decode(values, indices)``, ``forward(x) -> reconstruction`` and ``loss(x)``.
Beyond SAEs (docs/dictionaries.md): :class:`Transcoder` (one hook in, another out, optional
affine skip), :class:`Crosscoder` (L layers in and out, one latent space) and
:class:`CrossLayerTranscoder` (layer l's features write to layers l..L-1); each with an
``activation`` of relu / topk / batchtopk / jumprelu. ``needed_hooks(dictionaries)`` lists the
hook points one model pass must give the trainer.
"""
from pyinterp._files import CorruptFileError
from pyinterp.sae import metrics
from pyinterp.sae.acceleration import accelerate, restore
from pyinterp.sae.config import SAEConfig
from pyinterp.sae.crosscoders import Crosscoder, CrossLayerTranscoder
from pyinterp.sae.dictionary import SparseDictionary
from pyinterp.sae.feature_dashboards import dashboards
from pyinterp.sae.hub import from_pretrained
from pyinterp.sae.io import load, save
from pyinterp.sae.io_circuit_tracer import load_circuit_tracer
from pyinterp.sae.io_peers import load_gemma_scope, load_sparsify
from pyinterp.sae.modules import (
    BatchTopKSAE,
    JumpReLUSAE,
    MatryoshkaBatchTopKSAE,
    MatryoshkaTopKSAE,
    ReLUSAE,
    SAELoss,
    SparseAutoencoder,
    TopKSAE,
    build,
)
from pyinterp.sae.registry import architectures, get_sae_class, register_sae_class
from pyinterp.sae.store import ActivationStore, collect, stream
from pyinterp.sae.trainer import NonFiniteError, SAETrainer, TrainConfig, needed_hooks, train
from pyinterp.sae.transcoders import Transcoder

__all__ = [
    "ActivationStore", "BatchTopKSAE", "CorruptFileError", "CrossLayerTranscoder", "Crosscoder",
    "JumpReLUSAE", "MatryoshkaBatchTopKSAE", "MatryoshkaTopKSAE", "NonFiniteError",
    "ReLUSAE", "SAEConfig", "SAELoss", "SAETrainer", "SparseAutoencoder", "SparseDictionary",
    "TopKSAE", "TrainConfig", "Transcoder", "accelerate", "architectures", "build", "collect",
    "dashboards", "from_pretrained", "get_sae_class", "load", "load_circuit_tracer", "load_gemma_scope",
    "load_sparsify", "metrics", "needed_hooks",
    "register_sae_class", "restore", "save", "stream", "train",
]
