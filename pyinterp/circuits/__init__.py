"""Circuit tracing (Ameisen et al. 2025): attribution graphs over transcoder / CLT features.

    from pyinterp import circuits
    clt = circuits.as_dictionary(clt)                        # CLT, transcoder list, or protocol
    graph = circuits.attribute(model, clt, tokens)          # pruned graph, top logits as targets
    graph.scores                                             # replacement / completeness
    open("g.json", "w").write(graph.to_json("my-prompt"))   # circuit-tracer / Neuronpedia format
    cards = circuits.feature_cards(model, clt, rows, [(layer, index), ...], decode=decode)
    circuits.write_html(graph, "g.html", features=circuits.graph_cards(graph, cards))
    logits = circuits.ablate(model, clt, tokens, [(layer, pos, index)])   # interventions

``model``: pyinterp's Transformer, or a model from ``pyinterp.models.from_hf`` /
``from_transformer_lens``. ``clt``: anything implementing :class:`CircuitDictionary`.
"""
from pyinterp.circuits.attribution import attribute, salient_logits
from pyinterp.circuits.dictionary import (
    CircuitDictionary,
    CLTDictionary,
    NeuronDictionary,
    TranscoderSet,
    as_dictionary,
    check_dictionary,
)
from pyinterp.circuits.features import feature_cards, graph_cards
from pyinterp.circuits.graph import Graph
from pyinterp.circuits.html import write_html
from pyinterp.circuits.interventions import ablate, compare_ablations, demeaned_logit, intervene
from pyinterp.circuits.replacement import LocalReplacement, spliced_logits

__all__ = ["CLTDictionary", "CircuitDictionary", "Graph", "TranscoderSet", "as_dictionary", "LocalReplacement", "NeuronDictionary", "ablate", "attribute",
           "check_dictionary", "compare_ablations", "demeaned_logit", "feature_cards", "graph_cards",
           "intervene", "salient_logits", "spliced_logits", "write_html"]
