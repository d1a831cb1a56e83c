"""Hub ids, offline: ``from_hf("org/name")`` and ``pyinterp.sae.from_pretrained(release, sae_id)``
read a real Hugging Face cache layout (models--org--name/blobs, snapshots/<commit>, refs/main)
that the test builds from tiny local models, in a fresh interpreter with HF_HUB_OFFLINE=1 and
HF_HUB_CACHE pointing at it (huggingface_hub reads both when it is imported)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="hub loading needs transformers + huggingface_hub (pip install 'pyinterp[hf]')")

from hf_testing import add_to_hub_cache, build, tiny_tokenizer  # noqa: E402
from pyinterp.sae import TopKSAE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, cache: Path, tmp: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(tmp / "home"),
               PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("HF_HUB_DISABLE_SYMLINKS", None)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, cwd=tmp,
                          capture_output=True, text=True, timeout=300)


def test_hub_ids_load_offline_from_the_cache(tmp_path):
    cache = tmp_path / "hub"
    src = tmp_path / "src_model"
    hf = build("gpt2")
    hf.save_pretrained(src)
    tiny_tokenizer(64, src)
    add_to_hub_cache(cache, "tiny-org/tiny-gpt2", src)
    sae = TopKSAE(32, 96, k=4, seed=0, hook_name="blocks.0.hook_resid_pre")
    with torch.no_grad():
        sae.b_dec.normal_()
    sae.save(tmp_path / "src_saes" / "layer0")
    add_to_hub_cache(cache, "tiny-org/tiny-saes", tmp_path / "src_saes")
    # the registry's own repository for SAELens release gpt2-small-res-jb (tiny stand-in weights)
    reg = tmp_path / "src_jb"
    sae.save(reg / "blocks.0.hook_resid_pre")
    add_to_hub_cache(cache, "jbloom/GPT2-Small-SAEs-Reformatted", reg)
    torch.save({"t": torch.randint(0, 64, (2, 7))}, tmp_path / "tokens.pt")

    res = _run(f"""
        import warnings, torch, pytest
        import pyinterp
        from pyinterp.models import from_hf
        t = torch.load("tokens.pt")["t"]
        m = from_hf("tiny-org/tiny-gpt2")
        local = from_hf({str(src)!r})
        with torch.no_grad():
            assert torch.equal(m(t), local(t))
        assert m.tokenizer is not None and m.generate("w3 w4", max_new_tokens=3).startswith("w3 w4")
        with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
            from_hf("tiny-org/not-cached")
        with pytest.raises(FileNotFoundError, match="does not exist"):
            from_hf("./no/such/dir")

        ref = pyinterp.sae.load({str(tmp_path / "src_saes" / "layer0")!r})
        x = torch.randn(5, 32)
        by_repo = pyinterp.sae.from_pretrained("tiny-org/tiny-saes", "layer0")
        by_release = pyinterp.sae.from_pretrained("gpt2-small-res-jb", "blocks.0.hook_resid_pre")
        for s in (by_repo, by_release):
            assert s.hook_name == "blocks.0.hook_resid_pre"
            torch.testing.assert_close(s(x), ref(x))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import sae_lens
            theirs = sae_lens.SAE.from_pretrained("gpt2-small-res-jb", "blocks.0.hook_resid_pre")
        with torch.no_grad():
            torch.testing.assert_close(theirs(x), by_release(x), atol=1e-5, rtol=1e-5)
        with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
            pyinterp.sae.from_pretrained("gpt2-small-res-jb", "blocks.5.hook_resid_pre")
        with pytest.raises(ValueError, match="not in SAELens release"):
            pyinterp.sae.from_pretrained("gpt2-small-res-jb", "blocks.99.nope")
        with pytest.raises(FileNotFoundError, match="does not exist.*from_pretrained"):
            pyinterp.sae.load("gpt2-small-res-jb")
        print("ok")
    """, cache, tmp_path)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]
