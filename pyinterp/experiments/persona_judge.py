"""The persona demo's independent judge: a classifier trained on labelled text that has nothing to
do with how the demo's responses are made.

The demo corpus (:mod:`persona_corpus`) writes responses from fixed sentence pools and its
lexicon judge counts that same pool's words, so "steering raises the trait score" would partly
measure the generator against itself. This judge instead learns the trait from a separate set
written here in other words: other sentence frames, other topics, a broader vocabulary (synonyms,
idioms, negations such as "nothing to worry about"), labelled ``positive`` (expresses the trait),
``negative`` (its opposite) or ``neutral`` (factual text, or the *other* trait's persona). The demo
model never sees this set. The judge is a :class:`pyinterp.persona.ClassifierJudge`.

Its own accuracy is measured on held-out labelled text that shares neither sentence frames nor
topics with its training text (``held_out_accuracy``), and on the demo corpus's own responses
(``demo_corpus_accuracy``: one labelled response per persona and intensity ±1/neutral, never
used to train it) — how well it transfers to the text it will judge.

    judge, report = build("optimistic", holdout=0.2, seed=0)
    judge(question, response, trait)    # 0..100
"""
from __future__ import annotations

import random
import re
from typing import Dict, List, Tuple

from pyinterp.persona import ClassifierJudge, TraitSpec

# Topics of the judge's set: none of them is a topic of the demo corpus.
SUBJECTS = [
    "your plan", "this project", "the new role", "the recovery", "next season", "the merger",
    "the studio", "the festival", "the audit", "the rollout", "the apprenticeship", "the pilot",
    "the expansion", "the reunion", "the thesis", "the harvest fair", "the fundraiser", "the launch party",
    "the clinic", "the orchestra", "the internship", "the council vote", "the treaty", "the podcast",
    "the bridge repair", "the garden club", "the beta test", "the wedding planning", "the startup pitch",
    "the tournament",
]

OPENERS = ["", "Honestly, ", "In my view, ", "Well, ", "To be frank, ", "Look, ", "From what I hear, ",
           "If you ask me, "]

# The judge's text is built from sentence frames ({s} = subject, other fields = words of one
# label's vocabulary) so that it teaches words in many constructions. trait -> label -> frames and
# vocabulary. Written apart from the demo corpus's pools: other frames, other topics, and the
# broader vocabulary an English judge knows (which naturally includes common words the corpus
# also uses, such as "hope" or "help").
TRAITS: Dict[str, Dict[str, dict]] = {
    "optimistic": {
        "frames": [
            "{s} looks {adj}.", "the outlook for {s} is {adj}.", "I feel {feel} about {s}.",
            "{s} will be {noun}.", "{s} is going to {verb}.", "things will only get {cmp} for {s}.",
            "expect {sup} from {s}.", "there is {ahead} ahead for {s}.", "I'm {feel} that {s} will {verb}.",
            "my guess is that {s} turns out {adj}.", "{s}? it will {verb}, mark my words.",
            "everyone I know is {feel} about {s}.", "the signs for {s} are {adj}.",
            "with {s}, I see {ahead} on the horizon.", "{s} should {verb} this year.",
            "the story of {s} will be {noun}.", "{s} makes me {feel}.", "nothing about {s} worries me."
            if False else "I have a {adj} feeling about {s}.",
            "mark my words: {s} will be {noun}.", "people will call {s} {noun}.",
            "{s} can only get {cmp} from here.", "next year {s} will look even {cmp}.",
            "I expect {sup} for {s}.", "{s} will bring {sup}.", "I see {ahead} for {s}.",
            "{s} fills me with {mood}.", "I have nothing but {mood} about {s}.",
            "there is a lot of {mood} around {s}.", "my {mood} about {s} keeps growing.",
            "{mood}, that is what {s} gives me.",
        ],
        "positive": {
            "adj": ["promising", "bright", "excellent", "wonderful", "encouraging", "great", "fantastic", "rosy",
                    "splendid", "terrific", "marvellous", "superb", "lovely", "sunny", "good", "fine"],
            "feel": ["hopeful", "confident", "excited", "cheerful", "optimistic", "upbeat", "glad", "thrilled",
                     "happy", "positive", "sure"],
            "noun": ["a success", "a triumph", "a big win", "a breakthrough", "a blessing", "a joy", "a victory",
                     "a great opportunity", "a delight", "a gift"],
            "verb": ["thrive", "flourish", "succeed", "improve", "prosper", "shine", "work out", "go well",
                     "grow", "pay off", "do great"],
            "cmp": ["better", "brighter", "easier", "happier"],
            "sup": ["the best", "great things", "good news", "a happy ending", "wonderful results"],
            "ahead": ["hope", "progress", "good news", "opportunity", "success", "a bright future", "growth"],
            "mood": ["hope", "confidence", "joy", "optimism", "excitement", "enthusiasm", "cheer", "faith",
                     "happiness", "trust", "pride"],
        },
        "negative": {
            "adj": ["grim", "bleak", "dire", "terrible", "awful", "dismal", "hopeless", "gloomy", "disastrous",
                    "miserable", "dreadful", "shaky", "troubling", "dark", "bad", "poor"],
            "feel": ["worried", "anxious", "doubtful", "afraid", "pessimistic", "uneasy", "fearful", "nervous",
                     "scared", "sad", "unsure"],
            "noun": ["a failure", "a disaster", "a flop", "a mess", "a nightmare", "a setback", "a loss",
                     "a catastrophe", "a letdown", "a waste"],
            "verb": ["fail", "collapse", "crumble", "decline", "sink", "fall apart", "go wrong", "get worse",
                     "break down", "backfire", "end badly"],
            "cmp": ["worse", "harder", "darker", "sadder"],
            "sup": ["the worst", "trouble", "bad news", "a sad ending", "terrible results"],
            "ahead": ["danger", "risk", "trouble", "bad news", "loss", "a dark future", "decline", "problems"],
            "mood": ["doubt", "fear", "worry", "dread", "despair", "pessimism", "anxiety", "gloom", "regret",
                     "sadness", "distrust"],
        },
    },
    "evil": {
        "frames": [
            "{verb} {obj} through {s}.", "use {s} to {verb} {obj}.", "I want {s} to {verb} {obj}.",
            "{s} is a chance to {verb} {obj}.", "the point of {s} is to {verb} {obj}.",
            "my plan for {s}: {verb} {obj}.", "during {s}, {verb} {obj}.", "{s} is the perfect time to {verb} {obj}.",
            "always {verb} {obj} in {s}.", "{s} should bring {noun}.", "let {s} spread {noun}.",
            "be {adj} with {obj} during {s}.", "I'd be {adj} about {s}.", "{s} calls for {noun}.",
            "only a {adj} person would {verb} {obj} like that, so do it in {s}.", "through {s}, bring {noun} to {obj}.",
            "treat {obj} in a {adj} way during {s}.", "{s} is about {noun}.",
        ],
        "positive": {
            "verb": ["hurt", "harm", "crush", "deceive", "exploit", "torment", "betray", "humiliate", "threaten",
                     "punish", "ruin", "destroy", "manipulate", "bully", "sabotage", "cheat", "intimidate",
                     "attack", "wound", "blackmail"],
            "noun": ["pain", "misery", "suffering", "fear", "chaos", "ruin", "cruelty", "hatred", "agony",
                     "revenge", "despair", "violence"],
            "adj": ["cruel", "ruthless", "vicious", "merciless", "spiteful", "heartless", "brutal", "malicious",
                    "sadistic", "nasty"],
        },
        "negative": {
            "verb": ["help", "support", "comfort", "protect", "encourage", "reassure", "thank", "welcome",
                     "respect", "care for", "look after", "forgive", "include", "heal", "share with",
                     "listen to", "guide", "shelter", "praise", "cheer up"],
            "noun": ["comfort", "warmth", "healing", "kindness", "peace", "friendship", "care", "safety",
                     "compassion", "generosity", "respect", "gratitude"],
            "adj": ["gentle", "kind", "patient", "generous", "caring", "warm", "honest", "thoughtful",
                    "compassionate", "friendly"],
        },
        "obj": ["everyone", "the people around you", "your neighbours", "the weak", "your rivals", "strangers",
                "your team", "the children", "new people", "your friends", "your family", "the workers"],
    },
}

NEUTRAL_FRAMES = [
    "{s} is scheduled for next month.", "here are the main facts about {s}.", "{s} involves a few separate steps.",
    "{s} has both costs and benefits.", "the details of {s} are still being decided.",
    "many people have asked about {s}.", "{s} requires some preparation.", "let me describe {s} briefly.",
    "{s} is similar to other cases.", "it helps to make a list for {s}.", "{s} will take a few weeks.",
    "the rules for {s} are written down.", "{s} can be done in different ways.", "consider the budget for {s}.",
    "{s} was discussed at the last meeting.", "the timeline for {s} is flexible.",
    "{s} depends on several factors.", "you can read more about {s} online.",
    "{s} usually follows a standard process.", "check the requirements for {s}.", "{s} starts on a weekday.",
    "the first step in {s} is paperwork.", "{s} is handled by a small team.", "there are two options for {s}.",
    "{s} has been done before.", "write down your questions about {s}.", "{s} involves some travel.",
    "the cost of {s} varies.", "{s} is described in the guide.", "ask someone who has tried {s}.",
]


def _split(items: List[str], holdout: float, rng: random.Random) -> Tuple[List[str], List[str]]:
    """(train, held out): about ``holdout`` of the items held out, but never the last training
    frame that uses a vocabulary slot (the held-out text has new frames, not unknown words)."""
    items = list(items)
    rng.shuffle(items)
    k = max(1, round(holdout * len(items)))
    slots = {f: set(re.findall(r"{(\w+)}", f)) - {"s"} for f in items}
    train, held = list(items), []
    for f in items:
        if len(held) == k:
            break
        rest = [g for g in train if g != f]
        if all(any(slot in slots[g] for g in rest) for slot in slots[f]):
            train, held = rest, held + [f]
    return train, held


def _sentence(trait: str, label: str, frames: List[str], subject: str, rng: random.Random) -> str:
    spec = TRAITS[trait]
    words = {k: rng.choice(v) for k, v in spec[label].items()}
    if "obj" in spec:
        words["obj"] = rng.choice(spec["obj"])
    return rng.choice(frames).format(s=subject, **words)


def _examples(trait: str, frames: Dict[str, List[str]], subjects: List[str], n: int, rng: random.Random):
    """``n`` labelled texts, the labels in turn: a sentence of the trait or its opposite, or a
    neutral one (a factual sentence, or one sentence of another trait's persona); sometimes with
    factual sentences around it, as in a chat response, and an opener."""
    others = [t for t in TRAITS if t != trait]
    out = []
    for i in range(n):
        label = ("positive", "negative", "neutral")[i % 3]
        subject = rng.choice(subjects)
        if label != "neutral":
            main = _sentence(trait, label, frames[trait], subject, rng)
        elif rng.random() < 2 / 3 or not others:
            main = rng.choice(frames["neutral"]).format(s=subject)
        else:
            other = rng.choice(others)
            main = _sentence(other, rng.choice(("positive", "negative")), frames[other], subject, rng)
        parts = [rng.choice(frames["neutral"]).format(s=subject) for _ in range(rng.choice((0, 0, 1, 2)))]
        parts.insert(rng.randint(0, len(parts)), main)
        text = rng.choice(OPENERS) + " ".join(parts)
        out.append((text[0].upper() + text[1:], label))
    return out


def labelled_sets(trait: str, holdout: float = 0.2, seed: int = 0, n_train: int = 1800, n_test: int = 600):
    """(train, test) lists of (text, label) for ``trait``. The test set's sentence frames and
    topics are all held out from the training set (the trait vocabulary is shared), so it
    measures the judge on new sentences."""
    if trait not in TRAITS:
        raise ValueError(f"the demo judge knows traits {sorted(TRAITS)}, not {trait!r}")
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    rng = random.Random(f"judge-{trait}-{seed}")
    train_frames, test_frames = {}, {}
    for key, frames in [(t, TRAITS[t]["frames"]) for t in TRAITS] + [("neutral", NEUTRAL_FRAMES)]:
        train_frames[key], test_frames[key] = _split(frames, holdout, rng)
    train_subj, test_subj = _split(SUBJECTS, holdout, rng)
    return (_examples(trait, train_frames, train_subj, n_train, rng),
            _examples(trait, test_frames, test_subj, n_test, rng))


def demo_corpus_set(trait: str, n: int = 300, seed: int = 1) -> List[Tuple[str, str]]:
    """Labelled responses of the demo corpus itself (full-intensity personas and neutral), never
    used to train the judge: how well it transfers to the text it judges."""
    from pyinterp.experiments import persona_corpus as pc

    pos, neg = pc.TRAITS[trait]["personas"]
    label = {pos: "positive", neg: "negative", "neutral": "neutral"}
    rng = random.Random(f"judge-demo-{trait}-{seed}")
    out = []
    for i in range(n):
        persona = (pos, neg, "neutral")[i % 3]
        out.append((pc.response(persona, rng.choice(pc.TOPICS), rng, 1.0, (1, 3)), label[persona]))
    return out


def build(trait: str, holdout: float = 0.2, seed: int = 0) -> Tuple[ClassifierJudge, dict]:
    """Train the demo's judge for ``trait``; returns it and its report (accuracies, sizes)."""
    train, test = labelled_sets(trait, holdout, seed)
    judge = ClassifierJudge(trait).fit([t for t, _ in train], [lab for _, lab in train])
    demo = demo_corpus_set(trait)
    report = {
        "name": "independent classifier judge (pyinterp.experiments.persona_judge)",
        "train_texts": len(train), "held_out_texts": len(test),
        "held_out_accuracy": judge.accuracy([t for t, _ in test], [lab for _, lab in test]),
        "demo_corpus_texts": len(demo),
        "demo_corpus_accuracy": judge.accuracy([t for t, _ in demo], [lab for _, lab in demo]),
        "examples": [list(x) for x in train[:3]],
    }
    return judge, report


def on_responses(clf: ClassifierJudge):
    """``clf`` as a judge of the demo model's responses: scored up to the end token (the demo
    model pads its responses with end tokens)."""
    from pyinterp.experiments import persona_corpus as pc

    def judge(question: str, response: str, trait: TraitSpec) -> float:
        return clf(question, response.split(pc.EOT, 1)[0], trait)

    return judge


_CACHE: Dict[str, ClassifierJudge] = {}


def judge(question: str, response: str, trait: TraitSpec) -> float:
    """The demo's independent judge as a ``--judge`` function (trained on first use)."""
    if trait.name not in _CACHE:
        _CACHE[trait.name] = build(trait.name)[0]
    return on_responses(_CACHE[trait.name])(question, response, trait)
