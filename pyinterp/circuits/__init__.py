"""Circuit tracing (Ameisen et al. 2025): attribution graphs over transcoder / CLT features.

    from pyinterp import circuits
    graph = circuits.attribute(model, clt, tokens)          # pruned graph, top logits as targets
    graph.scores                                             # replacement / completeness
    open("g.json", "w").write(graph.to_json("my-prompt"))   # circuit-tracer / Neuronpedia format
    circuits.write_html(graph, "g.html", features=cards)    # offline interactive view
    circuits.ablate(model, clt, tokens, [(layer, pos, feature)])   # interventions

``model``: pyinterp's Transformer, or a model from ``pyinterp.models.from_hf`` /
``from_transformer_lens``. ``clt``: anything implementing :class:`CircuitDictionary`.
"""
from pyinterp.circuits.attribution import attribute, salient_logits
from pyinterp.circuits.dictionary import (
           CircuitDictionary,
           NeuronDictionary,
           check_dictionary,
)
from pyinterp.circuits.graph import Graph
from pyinterp.circuits.replacement import LocalReplacement

__all__ = ["CircuitDictionary", "Graph", "LocalReplacement", "NeuronDictionary", "attribute",
           "check_dictionary", "salient_logits"]
