"""Every loader against a corpus of damaged and forged files.

For each artefact pyinterp writes and reads back (SAE directories, SAE trainer checkpoints,
saved models with their tokenizer, model training checkpoints, activation stores, experiment
steps, the tokenizer and corpus caches, persona vectors), every file is damaged in turn
(deleted, emptied, truncated, bytes flipped at the start / middle / end, garbage appended,
random bytes, JSON of the wrong kind or nested too deeply, replaced by a folder, swapped with
the same file of another save) and forged (valid checksums over edited sizes, scales, paths).
Each load must either give exactly the original result ("held"; for a checkpoint folder, an
older checkpoint *with a warning* counts as held), or raise an error whose message names the
damaged file ("clear error"). A silently different result, or an error not naming the file,
fails. Counts go to $PYINTERP_FAULT_REPORT (docs/reliability.md).
"""
import hashlib
import json
import random
import shutil
import warnings
from pathlib import Path

import pytest
import torch

import fault_testing as F
from pyinterp._files import DIGEST_KEY, atomic_save_tensors, atomic_write_json, load_tensors

SEED = 16


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    F.dump(__name__)


def _fp(obj) -> str:
    """A fingerprint of tensors / dicts / lists / scalars, exact to the bit."""
    h = hashlib.sha256()

    def walk(o):
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(o, dict):
            for k in sorted(o, key=str):
                h.update(f"K{k}".encode())
                walk(o[k])
        elif isinstance(o, (list, tuple)):
            h.update(b"[")
            for x in o:
                walk(x)
            h.update(b"]")
        else:
            h.update(repr(o).encode())

    walk(obj)
    return h.hexdigest()


# ------------------------------------------------------------------ artefacts
class Artefact:
    """``build(dir, seed)`` writes it; ``load(dir)`` reads it back into a fingerprint;
    ``older(dir)`` the fingerprints a checkpoint loader may fall back to (with a warning)."""

    name = ""
    optional = ()  # files a save may lack (their absence is not damage)

    def build(self, d: Path, seed: int) -> None:
        raise NotImplementedError

    def load(self, d: Path) -> str:
        raise NotImplementedError

    def older(self, d: Path) -> set:
        return set()

    def forgeries(self):
        """(file relative to the directory, edit(path)) pairs: edits that keep the checksums
        valid (what a forger, not a bit flip, produces)."""
        return []


def _resign_sae(d: Path) -> None:
    """Rewrite the weights' metadata so their digests match the (edited) cfg.json."""
    w = d / "sae_weights.safetensors"
    t, meta = load_tensors(w, with_metadata=True)
    meta = {k: v for k, v in meta.items() if k != DIGEST_KEY}
    meta["pyinterp.cfg_sha256"] = hashlib.sha256((d / "cfg.json").read_bytes()).hexdigest()
    atomic_save_tensors(w, t, metadata=meta)


def _edit_json(path: Path, fn, checksum: bool = False) -> None:
    obj = json.loads(path.read_text())
    obj.pop("sha256", None)
    fn(obj)
    atomic_write_json(path, obj, checksum=checksum)


class SAEDir(Artefact):
    optional = ("sparsity.safetensors",)

    def __init__(self, kind):
        self.kind, self.name = kind, f"sae.load ({kind})"

    def build(self, d, seed):
        from pyinterp.sae import BatchTopKSAE, TopKSAE

        sae = TopKSAE(8, 24, k=3, seed=seed) if self.kind == "topk" else \
            BatchTopKSAE(8, 24, k=3, seed=seed)
        sae.set_input_scale(1.5)
        sae.save(d, feature_density=torch.linspace(0.01, 0.5, 24))

    def load(self, d):
        from pyinterp.sae import load
        from pyinterp.sae.io import load_sparsity

        sae = load(d)
        return _fp([sae.state_dict(), sae.cfg.to_dict(), load_sparsity(d)])

    def forgeries(self):
        def cfg(fn):
            return lambda p: (_edit_json(p, fn), _resign_sae(p.parent))

        def ours(key, value):
            def fn(o):
                o["metadata"]["pyinterp"][key] = value
            return fn

        def conf(key, value):
            def fn(o):
                o["metadata"]["pyinterp"]["config"][key] = value
            return fn

        out = [("cfg.json", cfg(lambda o: o.update(d_sae=10**12))),
               ("cfg.json", cfg(lambda o: o.update(d_in=0))),
               ("cfg.json", cfg(lambda o: o.update(d_sae=True))),
               ("cfg.json", cfg(ours("input_scale", 0.0))),
               ("cfg.json", cfg(ours("input_scale", float("nan")))),
               ("cfg.json", cfg(ours("input_scale", -1.0))),
               ("cfg.json", cfg(conf("d_sae", 48))),
               ("cfg.json", cfg(conf("d_in", 9))),
               ("cfg.json", cfg(lambda o: o.update(architecture="gated")))]
        if self.kind == "topk":
            out += [("cfg.json", cfg(lambda o: o.update(k=5))),
                    ("cfg.json", cfg(lambda o: o.update(k=0))),
                    ("cfg.json", cfg(lambda o: o.update(k=25))),
                    ("cfg.json", cfg(conf("k", 25)))]
        return out


def _source(seed=0):
    from pyinterp.sae import ActivationStore

    g = torch.Generator().manual_seed(seed)
    return ActivationStore.from_tensors(torch.randn(256, 8, generator=g), 16, seed=seed)


class SAECheckpoint(Artefact):
    name = "SAETrainer.resume"

    def build(self, d, seed):
        from pyinterp.sae import SAETrainer, TopKSAE, TrainConfig

        cfg = TrainConfig(steps=4, checkpoint_every=2, checkpoint_dir=str(d), progress=False,
                          keep_checkpoints=2, seed=seed)
        SAETrainer(TopKSAE(8, 24, k=3, seed=seed), _source(seed), cfg).run()

    @staticmethod
    def _state(tr):
        return _fp([tr.step, tr.tokens, tr.saes["sae"].state_dict(),
                    tr.optimizers["sae"].state_dict()["state"], tr.since_fired["sae"]])

    def load(self, d):
        from pyinterp.sae import SAETrainer

        return self._state(SAETrainer.resume(d, _source()))

    def older(self, d):
        from pyinterp.sae import SAETrainer, TopKSAE, TrainConfig

        # the state the step-2 checkpoint holds, read from an intact copy
        tr = SAETrainer(TopKSAE(8, 24, k=3, seed=0), _source(), TrainConfig(steps=4))
        tr.load_checkpoint(d / "step_00000002")
        return {self._state(tr)}

    def forgeries(self):
        def meta(fn):
            return lambda p: _edit_json(p, fn, checksum=True)

        def sizes(o):
            o["saes"]["sae"]["config"]["d_sae"] = 10**12

        def escape(o):
            o["files"]["../../../escape.safetensors"] = "0" * 64

        return [("step_00000004/trainer.json", meta(sizes)),
                ("step_00000004/trainer.json", meta(escape)),
                ("step_00000004/trainer.json", meta(lambda o: o.update(step=-3))),
                ("step_00000004/trainer.json", meta(lambda o: o.pop("feed"))),
                ("step_00000004/trainer.json", meta(lambda o: o["saes"]["sae"].update(optimizer=7))),
                ("latest.json", meta(lambda o: o.update(dir="../step_00000004"))),
                ("latest.json", meta(lambda o: o.update(dir="/etc"))),
                ("latest.json", meta(lambda o: o.update(dir="step_00000099")))]


def _bpe(seed):
    """A BPE of exactly 300 tokens, different for each seed."""
    from pyinterp.data.tokenizer import train_bpe

    g = random.Random(seed)
    words = ["".join(g.choice("abcdefghij") for _ in range(g.randint(2, 7))) for _ in range(400)]
    tok = train_bpe([" ".join(g.sample(words, 30)) for _ in range(300)], vocab_size=300,
                    min_frequency=1)
    assert tok.vocab_size == 300
    return tok


def _tiny_model(seed):
    from pyinterp.models import Transformer, TransformerConfig

    return Transformer(TransformerConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=300, n_ctx=8,
                                         act_fn="gelu", seed=seed))


class SavedModel(Artefact):
    name = "load_model"

    def build(self, d, seed):
        from pyinterp.models import save_model

        m = _tiny_model(seed)
        m.tokenizer = _bpe(seed)
        save_model(m, d)

    def load(self, d):
        from pyinterp.models import load_model

        m = load_model(d)
        return _fp([m.state_dict(), m.cfg.to_dict(), m.tokenizer.encode("the lazy fox word0")])

    def forgeries(self):
        def cfg(fn):
            return lambda p: _edit_json(p, fn, checksum=True)

        def vocab(o):
            o["config"]["d_vocab"] = 10**9

        def escape(o):
            o["files"]["../outside"] = "0" * 64

        return [("config.json", cfg(vocab)), ("config.json", cfg(escape)),
                ("config.json", cfg(lambda o: o["config"].update(n_layers=-1))),
                ("config.json", cfg(lambda o: o.update(architecture="gpt2"))),
                ("config.json", cfg(lambda o: o.update(config=[])))]


class ModelCheckpoint(Artefact):
    name = "models.train resume"

    def build(self, d, seed):
        from pyinterp.models.training import TrainConfig, train

        data = torch.randint(0, 300, (16, 8), generator=torch.Generator().manual_seed(seed))
        train(_tiny_model(seed), data, TrainConfig(max_steps=4, batch_size=4, checkpoint_every=2,
                                                   keep_checkpoints=2, progress=False), out_dir=d)

    @staticmethod
    def _state(ck):
        from pyinterp.models.training import TrainConfig, load_checkpoint, make_optimizer

        m = _tiny_model(0)
        opt = make_optimizer(m, TrainConfig())
        state = load_checkpoint(ck, m, opt)
        return _fp([state["step"], m.state_dict(), opt.state_dict()["state"]])

    def load(self, d):
        from pyinterp.models.training import latest_checkpoint

        return self._state(latest_checkpoint(d))

    def older(self, d):
        return {self._state(d / "step-0000002")}

    def forgeries(self):
        def resign(fn):
            def edit(p):
                _edit_json(p, fn, indent_none=True) if False else _edit_json(p, fn)
                from pyinterp.models.training import write_checksums

                (p.parent / "checksums.json").unlink()
                write_checksums(p.parent)
            return edit

        return [("step-0000004/trainer_state.json", resign(lambda o: o.update(step=-1))),
                ("step-0000004/trainer_state.json", resign(lambda o: o.update(step="4"))),
                ("step-0000004/config.json",
                 resign(lambda o: o["config"].update(d_model=10**6))),
                ("step-0000004/checksums.json",
                 lambda p: _edit_json(p, lambda o: o.update({"../x": "0" * 64}), checksum=True))]


class Store(Artefact):
    name = "ActivationStore"

    def build(self, d, seed):
        from pyinterp.sae import collect

        g = torch.Generator().manual_seed(seed)
        collect(d, [torch.randn(8, 6, generator=g) for _ in range(4)], shard_rows=16,
                progress=False)

    def load(self, d):
        from pyinterp.sae import ActivationStore

        return _fp(list(ActivationStore(d, 8, epochs=1, shuffle=False)))

    def forgeries(self):
        def man(fn):
            return lambda p: _edit_json(p, fn, checksum=True)

        def shard(key, value):
            def fn(o):
                o["shards"][1][key] = value
            return fn

        return [("manifest.json", man(shard("file", "/etc/passwd"))),
                ("manifest.json", man(shard("file", "../shard_00000.safetensors"))),
                ("manifest.json", man(shard("rows", 10**12))),
                ("manifest.json", man(lambda o: o["shards"][1].pop("sha256"))),
                ("manifest.json", man(lambda o: o["hooks"]["x"].update(d=0))),
                ("manifest.json", man(lambda o: o.update(total_rows=7))),
                ("manifest.json", man(lambda o: o.update(shards={})))]


class ExperimentStep(Artefact):
    name = "experiment step"

    @staticmethod
    def _result(seed):
        g = torch.Generator().manual_seed(seed)
        return {"w": torch.randn(5, 3, generator=g), "info": {"n": seed, "s": "x"},
                "nested": {"t": torch.arange(4) + seed}}

    def build(self, d, seed):
        from pyinterp.experiments._steps import Steps

        Steps(d, "x", f"hash{seed}").run("step", lambda: self._result(seed))

    def load(self, d):
        from pyinterp.experiments._steps import Steps

        # a recomputation (step not reused) returns the same result: held either way
        return _fp(Steps(d, "x", "hash0").run("step", lambda: self._result(0)))


class TokenizerCache(Artefact):
    name = "tokenizer cache"

    def build(self, d, seed):
        from pyinterp.data.tokenizer import _write_cached

        _write_cached(d / "corpus.bpe300.json", _bpe(seed))

    def load(self, d):
        from pyinterp.data.tokenizer import _read_cached

        return _fp(_read_cached(d / "corpus.bpe300.json", 300).encode("the lazy fox word0"))

    def forgeries(self):
        return [("corpus.bpe300.json",
                 lambda p: _edit_json(p, lambda o: o.update(vocab_size=512), checksum=True)),
                ("corpus.bpe300.json",
                 lambda p: _edit_json(p, lambda o: o.update(tokenizer="{}"), checksum=True))]


class CorpusCache(Artefact):
    name = "corpus cache"

    def build(self, d, seed):
        from pyinterp.data import corpus as C

        docs = [{"source": f"s{i}", "text": f"document {i} of seed {seed} " * 20} for i in range(5)]
        if seed == 0:
            self.docs = docs
        real = C._gather
        C._gather = lambda: iter(docs)
        try:
            C.build_default_corpus(d)
        finally:
            C._gather = real

    def load(self, d):
        from pyinterp.data import corpus as C

        real = C._gather  # a missing cache is gathered again: from the same documents
        C._gather = lambda: iter(self.docs)
        try:
            c = C.DefaultCorpus(d)
            return _fp([list(c), c.sources()])
        finally:
            C._gather = real


class Persona(Artefact):
    name = "PersonaVectors.load"

    def build(self, d, seed):
        from pyinterp.persona.extract import PersonaVectors

        g = torch.Generator().manual_seed(seed)
        PersonaVectors(trait="calm", layers=[0, 2], vectors=torch.randn(2, 16, generator=g),
                       pos_mean=torch.randn(2, 16, generator=g), stats={"n": seed}).save(d)

    def load(self, d):
        from pyinterp.persona.extract import PersonaVectors

        p = PersonaVectors.load(d)
        return _fp([p.trait, p.layers, p.vectors, p.pos_mean, p.neg_mean, p.stats])

    def forgeries(self):
        def meta(fn):
            return lambda p: _edit_json(p, fn, checksum=True)

        return [("persona.json", meta(lambda o: o.update(layers=[0, 1, 2]))),
                ("persona.json", meta(lambda o: o.update(layers="all"))),
                ("persona.json", meta(lambda o: o.update(trait=None)))]


ARTEFACTS = [SAEDir("topk"), SAEDir("batchtopk"), SAECheckpoint(), SavedModel(),
             ModelCheckpoint(), Store(), ExperimentStep(), TokenizerCache(), CorpusCache(),
             Persona()]


# ------------------------------------------------------------------ damage
def _flip(at):
    def damage(p: Path, twin: Path, rng) -> None:
        data = bytearray(p.read_bytes())
        i = at(len(data))
        data[i] ^= 1 << rng.randrange(8)
        p.write_bytes(bytes(data))
    return damage


def _replace(fn):
    def damage(p: Path, twin: Path, rng) -> None:
        p.write_bytes(fn(p.read_bytes(), rng))
    return damage


def _to_dir(p, twin, rng):
    p.unlink()
    p.mkdir()


def _swap(p, twin, rng):
    shutil.copyfile(twin, p)


DAMAGES = {
    "deleted": lambda p, twin, rng: p.unlink(),
    "emptied": _replace(lambda b, rng: b""),
    "truncated to half": _replace(lambda b, rng: b[: len(b) // 2]),
    "last byte cut": _replace(lambda b, rng: b[:-1]),
    "bit flip near the start": _flip(lambda n: min(n - 1, 9)),
    "bit flip in the middle": _flip(lambda n: n // 2),
    "bit flip near the end": _flip(lambda n: max(0, n - 2)),
    "garbage appended": _replace(lambda b, rng: b + b"\x00\xffgarbage"),
    "random bytes": _replace(lambda b, rng: bytes(rng.randrange(256) for _ in range(len(b)))),
    "JSON of another kind": _replace(lambda b, rng: b"[1, 2, 3]"),
    "JSON nested too deeply": _replace(lambda b, rng: b"[" * 200_000 + b"]" * 200_000),
    "replaced by a folder": _to_dir,
    "swapped with another save's": _swap,
}


def _files(d: Path):
    return sorted(p.relative_to(d) for p in d.rglob("*") if p.is_file() and p.name != ".lock")


def _same_tree(a: Path, b: Path) -> bool:
    fa, fb = _files(a), _files(b)
    return fa == fb and all((a / f).read_bytes() == (b / f).read_bytes() for f in fa)


def _check(art: Artefact, d: Path, victim: Path, expected: str, older: set, what: str,
           twin: Path, twin_fp: str) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            got = art.load(d)
        except (ValueError, OSError) as exc:  # CorruptFileError is a ValueError
            names = {victim.name, str(victim.parent)} if victim.name != ".lock" else set()
            assert any(n in str(exc) for n in names), \
                f"{art.name}, {victim} {what}: the error does not name the file: {exc!r}"
            return "clear error"
    if got == expected:
        return "held"
    if got == twin_fp and _same_tree(d, twin):
        return "held"  # the files are, byte for byte, another valid save: loaded as that one
    warned = any("verifies" in str(w.message) for w in caught)
    assert got in older and warned, f"{art.name}, {victim} {what}: loaded a different result"
    return "held"


@pytest.mark.parametrize("art", ARTEFACTS, ids=lambda a: a.name)
def test_every_loader_against_damaged_and_forged_files(art, tmp_path):
    rng = random.Random(SEED)
    orig, twin = tmp_path / "orig", tmp_path / "twin"
    art.build(orig, 0)
    art.build(twin, 1)
    expected, twin_fp = art.load(orig), art.load(twin)
    older = art.older(orig)
    tried = 0
    for rel in _files(orig):
        for what, damage in DAMAGES.items():
            if what.startswith("JSON") and rel.suffix not in (".json", ".jsonl", ""):
                continue
            if what.startswith("swapped") and not (twin / rel).is_file():
                continue
            if what == "deleted" and rel.name in art.optional:
                continue
            d = tmp_path / f"case{tried}"
            shutil.copytree(orig, d)
            damage(d / rel, twin / rel, rng)
            F.record(f"bad files: {art.name}",
                     _check(art, d, d / rel, expected, older, what, twin, twin_fp))
            tried += 1
            shutil.rmtree(d)
    for rel, forge in art.forgeries():
        d = tmp_path / f"case{tried}"
        shutil.copytree(orig, d)
        forge(d / rel)
        F.record(f"forged files: {art.name}",
                 _check(art, d, d / rel, expected, older, "forged", twin, twin_fp))
        tried += 1
        shutil.rmtree(d)
    assert tried >= 10
