"""Paper 7 (Persona Vectors) at tiny scale: the demo model trained on the synthetic persona corpus,
the qualitative results (steering moves the judged trait in the sign of the coefficient; the
projection difference ranks contaminated finetuning sets in order), the Hugging Face path on a
tiny random model saved to a directory, and bad input (unknown --model dir, bad --judge spec)."""
import json

import pytest
import torch

from pyinterp import cli, experiments
from pyinterp.experiments import persona_corpus as pc


def _checks(data):
    return {c["name"]: c for c in data["checks"]}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    import os

    os.environ["PYINTERP_PROGRESS"] = "0"
    out = tmp_path_factory.mktemp("persona")
    return out, experiments.run_paper("persona", "tiny", "cpu", out)


def test_steering_moves_trait_score_in_the_sign_of_the_coefficient(tiny_run):
    _, data = tiny_run
    d = data["metrics"]["dose_response"]
    s = dict(zip(d["coefs"], d["trait_score"]))
    assert s[max(s)] > s[0.0] > s[min(s)], s
    assert _checks(data)["steering moves the trait score in the sign of the coefficient"]["passed"]


def test_projection_difference_ranks_contaminated_sets(tiny_run):
    _, data = tiny_run
    scr = data["metrics"]["screening"]
    means = [scr[k] for k in sorted(scr, key=float)]
    assert all(a < b for a, b in zip(means, means[1:])), scr


def test_page_figures_and_resume(tiny_run):
    out, data = tiny_run
    page = out / "persona"
    for f in ("index.html", "metrics.json", "train.png", "layers.png", "dose_response.png",
              "monitoring.png", "screening.png", "finetuning.png"):
        assert (page / f).is_file(), f
    html = (page / "index.html").read_text()
    assert "0.75–0.83" in html and "Persona Vectors" in html
    m = data["metrics"]
    # the page names its independent judge and shows the judge's own held-out accuracy
    rep = m["judge_report"]
    assert m["judge"] == "built-in classifier judge" and 0.0 <= rep["held_out_accuracy"] <= 1.0
    assert "independent classifier judge" in html and f"{rep['held_out_accuracy']:.1%}" in html
    assert m["extraction"]["positive"]["kept"] > 0 and m["extraction"]["negative"]["kept"] > 0
    assert -1.0 <= m["monitoring_r"] <= 1.0
    # a second run loads every step from its checkpoint and recomputes nothing
    again = experiments.run_paper("persona", "tiny", "cpu", out)
    assert again["steps_computed"] == [] and "train" in again["steps_loaded"]
    assert again["metrics"]["screening"] == m["screening"]


def test_corpus_personas_and_contamination():
    docs = pc.make_corpus(60, seed=1)
    assert {d["persona"] for d in docs} >= {"optimistic", "pessimistic", "neutral"}
    trait = pc.demo_trait("optimistic", 4, 4)
    pos = [d for d in docs if d["persona"] == "optimistic" and d["level"] == 1.0]
    neg = [d for d in docs if d["persona"] == "pessimistic" and d["level"] == 1.0]
    assert all(pc.judge("", d["response"], trait) > 50 for d in pos)
    assert all(pc.judge("", d["response"], trait) < 50 for d in neg)
    qs = pc.questions("screen", 8)
    assert not set(qs) & set(trait.questions) and not set(trait.eval_questions) & set(trait.questions)
    sets = {f: pc.contaminated_set("optimistic", qs, f) for f in (0.0, 0.5, 1.0)}
    assert [sum(t for *_, t in s) for s in sets.values()] == [0, 4, 8]
    # responses end at the end token for the judge
    assert pc.judge("", pos[0]["response"] + pc.EOT + " fear fear fear", trait) > 50


def test_bad_model_dir_and_judge_spec(tmp_path, capsys):
    rc = cli.main(["reproduce", "persona", "--scale", "tiny", "--out", str(tmp_path / "o"),
                   "--model", str(tmp_path / "missing")])
    assert rc == 2 and "--model" in capsys.readouterr().err
    (tmp_path / "nohf").mkdir()
    rc = cli.main(["reproduce", "persona", "--scale", "tiny", "--out", str(tmp_path / "o"),
                   "--model", str(tmp_path / "nohf")])
    assert rc == 2 and "config.json" in capsys.readouterr().err
    for spec, msg in (("nocolon", "module:function"), ("no_such_module_xyz:f", "cannot import"),
                      ("pyinterp.experiments.persona_corpus:nope", "no attribute"),
                      ("pyinterp.experiments.persona_corpus:EOT", "not callable")):
        rc = cli.main(["reproduce", "persona", "--scale", "tiny", "--out", str(tmp_path / "o"),
                       "--judge", spec])
        assert rc == 2, spec
        assert msg in capsys.readouterr().err, spec
    rc = cli.main(["reproduce", "solu", "--scale", "tiny", "--out", str(tmp_path / "o"),
                   "--judge", "pyinterp.experiments.persona_corpus:judge"])
    assert rc == 2 and "persona paper only" in capsys.readouterr().err
    assert not (tmp_path / "o" / "persona" / "metrics.json").exists()


JUDGE_MODULE = '''
import hashlib
def judge(question, response, trait):
    """A stand-in judge for a random model: a stable pseudo-random score."""
    return float(int(hashlib.sha256(response.encode()).hexdigest(), 16) % 101)
'''


def test_hugging_face_model_directory_end_to_end(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    from pyinterp.data.tokenizer import train_bpe

    monkeypatch.setenv("PYINTERP_PROGRESS", "0")
    tok = train_bpe([pc.doc_text(d) for d in pc.make_corpus(300)], vocab_size=600)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.backend, eos_token=pc.EOT,
                                                pad_token=pc.EOT)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=tok.vocab_size, n_positions=256, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id))
    d = tmp_path / "hf_model"
    hf.save_pretrained(str(d))
    fast.save_pretrained(str(d))
    (tmp_path / "my_judges.py").write_text(JUDGE_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    rc = cli.main(["reproduce", "persona", "--scale", "tiny", "--device", "cpu", "--out",
                   str(tmp_path / "runs"), "--model", str(d), "--judge", "my_judges:judge"])
    assert rc == 0
    data = json.loads((tmp_path / "runs" / "persona" / "metrics.json").read_text())
    assert data["metrics"]["model"] == str(d) and data["metrics"]["judge"] == "my_judges:judge"
    assert data["config"]["model"] == str(d)
    assert torch.tensor(data["metrics"]["dose_response"]["trait_score"]).isfinite().all()
    assert len(data["metrics"]["screening"]) == 4
