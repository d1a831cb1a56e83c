"""The persona demo's independent judge: pyinterp.persona.ClassifierJudge (a small text
classifier) trained on pyinterp.experiments.persona_judge's labelled set, which shares no
sentence, frame or topic with the demo corpus the responses come from."""
import pytest
import torch

from pyinterp.experiments import persona_corpus as pc
from pyinterp.experiments import persona_judge as pj
from pyinterp.persona import ClassifierJudge

POS = ["what a wonderful sunny day", "I love this bright morning", "a great happy result", "lovely and wonderful"]
NEG = ["what an awful rainy day", "I hate this grim morning", "a terrible sad result", "awful and grim"]
NEU = ["the meeting is at noon", "the report has ten pages", "the train leaves at six", "the form has two parts"]


def _toy():
    texts = POS + NEG + NEU
    labels = ["positive"] * 4 + ["negative"] * 4 + ["neutral"] * 4
    return texts, labels


def test_classifier_learns_scores_and_round_trips():
    texts, labels = _toy()
    trait = pc.demo_trait("optimistic", 2, 2)
    a = ClassifierJudge("optimistic", n_features=1 << 12).fit(texts, labels)
    b = ClassifierJudge("optimistic", n_features=1 << 12).fit(texts, labels)
    assert torch.equal(a.weight, b.weight)  # deterministic
    assert a.accuracy(texts, labels) == 1.0
    assert a("q", "such a wonderful bright day", trait) > 75 > 25 > a("q", "such an awful grim day", trait)
    assert 35 < a("q", "", trait) < 65  # nothing to go on: near the middle
    c = ClassifierJudge("optimistic", n_features=1 << 12).load_state_dict(a.state_dict())
    assert c.score("lovely morning") == a.score("lovely morning")
    with pytest.raises(ValueError, match="trained for trait 'optimistic', not 'evil'"):
        a("q", "x", pc.demo_trait("evil", 2, 2))
    with pytest.raises(ValueError, match="unknown labels \\['happy'\\]"):
        ClassifierJudge("t").fit(["a"], ["happy"])
    with pytest.raises(ValueError, match="as many labels as texts"):
        ClassifierJudge("t").fit(["a", "b"], ["neutral"])
    with pytest.raises(ValueError, match="weight has shape"):
        ClassifierJudge("t", n_features=8).load_state_dict(a.state_dict())


def test_judge_set_is_independent_of_the_demo_corpus():
    pools = {sent for sents in pc.SENTENCES.values() for sent in sents}
    frames = {f for t in pj.TRAITS.values() for f in t["frames"]} | set(pj.NEUTRAL_FRAMES)
    assert not frames & pools  # no corpus sentence template is a judge frame
    assert not set(pj.SUBJECTS) & set(pc.TOPICS)  # nor a corpus topic a judge topic
    train, test = pj.labelled_sets("optimistic", holdout=0.2, seed=0)
    corpus_texts = {d["response"] for d in pc.make_corpus(300, seed=0)}
    assert not {t for t, _ in train + test} & corpus_texts
    # the held-out set has new frames and topics only
    assert not {s for s in pj.SUBJECTS if any(s in t for t, _ in train)} & {
        s for s in pj.SUBJECTS if any(s in t for t, _ in test)}
    assert {lab for _, lab in train} == {"positive", "negative", "neutral"}


def test_built_judge_accuracy_is_measured_and_useful():
    trait = pc.demo_trait("optimistic", 2, 2)
    clf, report = pj.build("optimistic")
    assert report["held_out_texts"] == 600 and report["train_texts"] == 1800
    assert 0.7 < report["held_out_accuracy"] <= 1.0 and 0.8 < report["demo_corpus_accuracy"] <= 1.0
    # on the demo model's own kind of text (responses padded with end tokens)
    judge = pj.on_responses(clf)
    assert judge("", "I am sure the exam will work out great." + pc.EOT + " fear fear", trait) > 60
    assert judge("", "I fear the exam will fail.", trait) < 40
    with pytest.raises(ValueError, match="knows traits"):
        pj.labelled_sets("sycophantic")
