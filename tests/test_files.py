"""pyinterp._files: atomic writes (umask, fsync, full disk), checksums, bounded reads, paths."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from pyinterp._files import (
    DIGEST_KEY,
    CorruptFileError,
    DiskFullError,
    atomic_save_tensors,
    atomic_write,
    atomic_write_json,
    inside,
    load_tensors,
    read_header,
    read_json,
    remove_stale_temps,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_honour_the_umask(tmp_path, umask):
    from pyinterp.experiments._io import write_json

    old = os.umask(umask)
    try:
        for f in (atomic_write(tmp_path / "a.bin", b"x"), write_json(tmp_path / "m.json", {"a": 1}),
                  atomic_save_tensors(tmp_path / "t.safetensors", {"x": torch.zeros(2)})):
            assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f
    finally:
        os.umask(old)


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    f = tmp_path / "state.json"
    atomic_write_json(f, {"step": 1})

    def half(fh):
        fh.write(b'{"step": 2')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(f, half)
    assert json.loads(f.read_text()) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_full_disk_names_the_file_and_keeps_the_old_one(tmp_path):
    """A real write past a file-size limit (RLIMIT_FSIZE, EFBIG) in a child process."""
    code = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from pyinterp._files import atomic_write, DiskFullError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            atomic_write({str(tmp_path / "big.bin")!r}, b"y" * 100000)
        except DiskFullError as e:
            print("DiskFullError", e)
    """)
    (tmp_path / "big.bin").write_bytes(b"old")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("DiskFullError"), out.stdout + out.stderr
    assert "big.bin" in out.stdout and "intact" in out.stdout
    assert (tmp_path / "big.bin").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]
    assert issubclass(DiskFullError, OSError)


def test_safetensors_carry_and_verify_their_digest(tmp_path):
    f = tmp_path / "w.safetensors"
    atomic_save_tensors(f, {"a": torch.arange(64.0), "b": torch.ones(3, dtype=torch.bfloat16)},
                        metadata={"note": "x"})
    t, meta = load_tensors(f, with_metadata=True)
    assert DIGEST_KEY in meta and meta["note"] == "x" and torch.equal(t["a"], torch.arange(64.0))
    good = f.read_bytes()
    flipped = bytearray(good)
    flipped[-5] ^= 0x10  # a bit in the tensor data: safetensors itself cannot notice
    f.write_bytes(bytes(flipped))
    with pytest.raises(CorruptFileError, match=r"w\.safetensors is damaged"):
        load_tensors(f)
    f.write_bytes(good[:-9])
    with pytest.raises(CorruptFileError, match=r"w\.safetensors is truncated or corrupt"):
        load_tensors(f)
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, str(f))  # no digest: loads, unless one is required
    assert load_tensors(f)["a"].shape == (2,)
    with pytest.raises(CorruptFileError, match="no content checksum"):
        load_tensors(f, require_digest=True)


def test_forged_header_sizes_are_refused_before_allocation(tmp_path):
    f = tmp_path / "forged.safetensors"
    header = json.dumps({"W": {"dtype": "F32", "shape": [1 << 20, 1 << 20],
                               "data_offsets": [0, 16]}}).encode()
    f.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)
    with pytest.raises(CorruptFileError, match="forged.safetensors.*needs"):
        read_header(f)
    with pytest.raises(CorruptFileError, match="forged.safetensors"):
        load_tensors(f)
    f.write_bytes((1 << 62).to_bytes(8, "little") + b"{}")
    with pytest.raises(CorruptFileError, match="header length"):
        read_header(f)


def test_json_reads_are_bounded_and_name_the_file(tmp_path):
    f = tmp_path / "cfg.json"
    f.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(CorruptFileError, match=r"cfg\.json is nested too deeply"):
        read_json(f)
    f.write_bytes(b"\xff\xfe{")
    with pytest.raises(CorruptFileError, match=r"cfg\.json is not valid JSON"):
        read_json(f)
    f.write_text('{"a": 1}')
    with pytest.raises(CorruptFileError, match="more than the 4 such a file can hold"):
        read_json(f, max_bytes=4)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_json(tmp_path / "nope.json")
    atomic_write_json(f, {"a": 1, "b": [1.5, None]}, checksum=True)
    assert read_json(f, checksum="require") == {"a": 1, "b": [1.5, None]}
    f.write_text(f.read_text().replace("1.5", "2.5"))
    with pytest.raises(CorruptFileError, match="damaged or edited"):
        read_json(f)


def test_paths_read_from_files_stay_inside(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    assert inside(root, "step_1") == root / "step_1"
    for bad in ("../outside", "/etc/passwd", "", "a/../../outside", "link", 7):
        with pytest.raises(CorruptFileError):
            inside(root, bad, source=root / "latest.json")


def test_stale_temporaries_are_recognised(tmp_path):
    names = [".x.json.tmp-12-ab12cd34", ".tmp_step_00000003_999", ".step-0000003.tmp77",
             "latest.json.tmp42", ".metrics.json.k2j4_x9a.tmp"]
    keep = ["step_00000003", "latest.json", ".lock", "notes.tmp", "metrics.json"]
    for n in names + keep:
        (tmp_path / n).mkdir() if n.startswith((".tmp_step", ".step-", "step_")) \
            else (tmp_path / n).write_text("x")
    removed = remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted(names)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
