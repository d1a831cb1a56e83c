"""The one place pyinterp writes files it will read back, and reads them back.

Every artefact a later run reads (weights, configs, trainer state, experiment steps, caches,
saved models) goes through these helpers, so the whole package shares one set of promises:

Writing
    :func:`atomic_write` (and ``_bytes``/``_text``/``_json``, :func:`atomic_save_tensors`)
    writes to a temporary file in the target's directory, flushes and ``fsync``s it, renames
    it over the target and ``fsync``s the directory. A reader sees the old file or the new
    one, never half of one, even after a power cut. The file's mode honours the umask (as
    ``open()`` does; ``tempfile.mkstemp`` would make it 0600). A full disk raises
    :class:`DiskFullError` naming the file; the previous version stays intact and the
    temporary file is removed. Temporary names contain :data:`TEMP_MARK`, so a directory
    owner can clean what a killed writer left (:func:`remove_stale_temps`).

Checksums
    safetensors files carry the sha256 of their content (every tensor's name, dtype, shape
    and bytes, and the other metadata) in their own metadata (:data:`DIGEST_KEY`); JSON files
    written with ``checksum=True`` carry the sha256 of their canonical form in the field
    :data:`JSON_DIGEST_KEY`. Readers verify what is present (and can require it). A checksum
    catches damage (bit flips, truncation, a half-copied file), not a deliberate forgery:
    loaders still check every size they read against the tensors and against limits before
    they allocate anything.

Reading
    :func:`read_json` (size and nesting limits), :func:`read_header` (tensor names, dtypes
    and shapes from a safetensors header, validated against the file size, without loading
    any tensor), :func:`load_tensors` (verifies the content digest; never unpickles),
    :func:`read_verified` (bytes checked against a recorded sha256).

Every damaged, truncated, forged or inconsistent file raises :class:`CorruptFileError`,
whose message names the file and says what was expected. A file the caller asked for that
does not exist raises ``FileNotFoundError`` (a wrong path is not a damaged file).

Paths read from files (a pointer to the newest checkpoint, a shard listed in a manifest)
go through :func:`inside`, which rejects anything that leaves the directory.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import struct
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

#: Part of every temporary name this module creates (``.<name>.tmp-<pid>-<random>``).
TEMP_MARK = ".tmp-"
#: safetensors metadata key holding the sha256 of the file's content.
DIGEST_KEY = "pyinterp.sha256"
#: JSON field holding the sha256 of the rest of the object (canonical form).
JSON_DIGEST_KEY = "sha256"
#: Largest JSON file read back (configs, trainer state, manifests, pointers).
MAX_JSON_BYTES = 256 << 20
#: Largest safetensors header (the header lists tensors, not their data).
MAX_HEADER_BYTES = 100 << 20
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# Temporary names of earlier pyinterp versions (cleaned like ours).
_OLD_TEMPS = re.compile(r"^(\.tmp_step_\d{8}_\d+|\.step-\d{7}\.tmp\d+|[^.].*\.tmp\d+|"
                        r"\..+\.[a-z0-9_]{8}\.tmp)$")


class CorruptFileError(ValueError):
    """A file pyinterp reads is damaged, truncated, forged or inconsistent with its siblings.

    The message names the file and what was expected; ``path`` holds the file when known.
    """

    def __init__(self, message: str, path: Optional[PathLike] = None):
        if path is not None and str(path) not in message:
            message = f"{path}: {message}"
        super().__init__(message)
        self.path = Path(path) if path is not None else None


class DiskFullError(OSError):
    """No space left (or a file-size limit hit) while writing a file; names the file."""


# ---------------------------------------------------------------------------------- writing
def temp_path(path: Path) -> Path:
    """A fresh temporary name beside ``path`` (same directory, so the rename is atomic)."""
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def fsync_dir(directory: PathLike) -> None:
    """Persist a rename or a new entry in ``directory`` (no-op where directories can't be opened)."""
    try:
        fd = os.open(str(directory), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def disk_full(exc: OSError, path: PathLike) -> DiskFullError:
    """The :class:`DiskFullError` for ``exc`` (an ENOSPC/EDQUOT/EFBIG) while writing ``path``."""
    what = os.strerror(exc.errno) if exc.errno else str(exc)
    return DiskFullError(exc.errno, f"{what} while writing {path}; free space or write "
                                    "elsewhere (the previous version of the file, if any, is intact)",
                         str(path))


def atomic_write(path: PathLike, data: Union[bytes, str, Callable[[BinaryIO], Any]]) -> Path:
    """Write ``data`` (bytes, text as UTF-8, or ``fn(binary_file)``) to ``path`` atomically.

    Parent directories are created. The file gets mode ``0o666 & ~umask``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            raise disk_full(exc, path) from None
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    return atomic_write(path, bytes(data))


def atomic_write_text(path: PathLike, text: str) -> Path:
    return atomic_write(path, str(text))


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def json_digest(obj: Mapping) -> str:
    """sha256 of ``obj`` without its :data:`JSON_DIGEST_KEY` field, in canonical JSON form."""
    return hashlib.sha256(_canonical({k: v for k, v in obj.items()
                                      if k != JSON_DIGEST_KEY})).hexdigest()


def atomic_write_json(path: PathLike, obj: Any, *, checksum: bool = False,
                      indent: Optional[int] = 2) -> Path:
    """``obj`` as JSON, atomically; ``checksum=True`` adds the :data:`JSON_DIGEST_KEY` field."""
    if checksum:
        if not isinstance(obj, Mapping):
            raise TypeError("a checksummed JSON file must hold an object")
        obj = dict(obj)
        obj[JSON_DIGEST_KEY] = json_digest(obj)
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def tensor_digest(tensors: Mapping[str, Any], metadata: Optional[Mapping[str, str]] = None) -> str:
    """sha256 of tensors (name, dtype, shape, bytes, in name order) and string metadata."""
    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(_canonical([name, str(t.dtype), list(t.shape)]))
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    h.update(_canonical({k: v for k, v in (metadata or {}).items() if k != DIGEST_KEY}))
    return h.hexdigest()


def atomic_save_tensors(path: PathLike, tensors: Mapping[str, Any],
                        metadata: Optional[Mapping[str, str]] = None) -> Path:
    """A safetensors file, written atomically, carrying its content digest (:data:`DIGEST_KEY`).

    The digest lives in the file's metadata, so other readers (SAELens, ``safetensors``)
    read the file as usual.
    """
    from safetensors.torch import save

    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta[DIGEST_KEY] = tensor_digest(clean, meta)
    return atomic_write_bytes(path, save(clean, metadata=meta))


def remove_stale_temps(directory: PathLike) -> list:
    """Delete the temporary files/folders killed writers left directly in ``directory``.

    Only for a directory whose writer holds its lock (no live writer can own them then).
    Returns the removed paths.
    """
    import shutil

    removed = []
    d = Path(directory)
    if not d.is_dir():
        return removed
    for p in d.iterdir():
        if (p.name.startswith(".") and TEMP_MARK in p.name) or _OLD_TEMPS.match(p.name):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                try:
                    p.unlink()
                except OSError:
                    continue
            removed.append(p)
    return removed


# ---------------------------------------------------------------------------------- reading
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _missing(path: Path, what: str) -> FileNotFoundError:
    if path.exists():
        return FileNotFoundError(f"{what} {path} is not a file")
    return FileNotFoundError(f"{what} {path} does not exist")


def read_bytes(path: PathLike, what: str = "file", *, max_bytes: Optional[int] = None) -> bytes:
    """The bytes of ``path``; FileNotFoundError if absent, CorruptFileError past ``max_bytes``."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path, what)
    if max_bytes is not None and path.stat().st_size > max_bytes:
        raise CorruptFileError(f"{what} {path} is {path.stat().st_size} bytes, more than the "
                               f"{max_bytes} such a file can hold", path)
    return path.read_bytes()


def read_verified(path: PathLike, sha256: str, what: str = "file",
                  listed_in: Optional[PathLike] = None) -> bytes:
    """The bytes of ``path``, checked against the recorded ``sha256`` (read once)."""
    path = Path(path)
    where = f" (listed in {listed_in})" if listed_in is not None else ""
    if not path.is_file():
        raise CorruptFileError(f"{what} {path} is missing{where}", path)
    if not isinstance(sha256, str) or len(sha256) != 64:
        raise CorruptFileError(f"the sha256 recorded for {path}{where} is not a sha256 "
                               f"digest: {sha256!r}", listed_in or path)
    data = path.read_bytes()
    actual = sha256_bytes(data)
    if actual != sha256:
        raise CorruptFileError(f"{what} {path} is corrupt: its sha256 {actual[:12]}... does not "
                               f"match the {sha256[:12]}... recorded{where or ' for it'}", path)
    return data


def parse_json(data: bytes, path: PathLike, what: str = "file") -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptFileError(f"{what} {path} is not valid JSON ({exc})", path) from None
    except RecursionError:
        raise CorruptFileError(f"{what} {path} is nested too deeply to be a pyinterp file",
                               path) from None


def check_json_digest(obj: Mapping, path: PathLike, what: str = "file") -> None:
    recorded = obj.get(JSON_DIGEST_KEY)
    if recorded != json_digest(obj):
        raise CorruptFileError(
            f"{what} {path} was damaged or edited: its content does not match the sha256 "
            f"recorded in its {JSON_DIGEST_KEY!r} field", path)


def read_json(path: PathLike, what: str = "file", *, checksum: str = "if-present",
              max_bytes: int = MAX_JSON_BYTES, data: Optional[bytes] = None) -> dict:
    """A JSON object from ``path`` (or from ``data`` read from it).

    ``checksum``: "require" (the :data:`JSON_DIGEST_KEY` field must be there and match),
    "if-present" (verify it when there), "ignore". The digest field is removed from the result.
    """
    path = Path(path)
    if data is None:
        data = read_bytes(path, what, max_bytes=max_bytes)
    obj = parse_json(data, path, what)
    if not isinstance(obj, dict):
        raise CorruptFileError(f"{what} {path} must hold a JSON object, got {type(obj).__name__}",
                               path)
    if checksum != "ignore" and (JSON_DIGEST_KEY in obj or checksum == "require"):
        if JSON_DIGEST_KEY not in obj:
            raise CorruptFileError(f"{what} {path} has no {JSON_DIGEST_KEY!r} field (written by an "
                                   "older pyinterp or by hand); expected a checksummed file", path)
        check_json_digest(obj, path, what)
        obj = {k: v for k, v in obj.items() if k != JSON_DIGEST_KEY}
    return obj


_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2,
                "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def parse_header(head: bytes, size: int, path: PathLike, what: str = "file"):
    """Validate a safetensors header (``head``: the file's first bytes or all of them;
    ``size``: the file's length).

    Returns ``({name: (dtype, shape)}, metadata)``. Checks that the header fits the file,
    every dtype is known, shapes are lists of non-negative ints, and each tensor's byte range
    lies inside the file and matches its shape.
    """
    def bad(problem: str):
        return CorruptFileError(f"{what} {path} is truncated or corrupt: {problem}", path)

    if size < 8 or len(head) < 8:
        raise bad(f"{size} bytes, shorter than the 8-byte header length")
    n = struct.unpack("<Q", head[:8])[0]
    if n > MAX_HEADER_BYTES or 8 + n > size:
        raise bad(f"header length {n} does not fit the file ({size} bytes)")
    if len(head) < 8 + n:
        raise bad("the header is cut short")
    header = parse_json(head[8:8 + n], path, what)
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise bad("__metadata__ must map names to strings")
    data_len = size - 8 - n
    entries = {}
    for name, e in header.items():
        if not isinstance(e, dict) or e.get("dtype") not in _DTYPE_BYTES:
            raise bad(f"tensor {name!r} has no known dtype")
        shape, offs = e.get("shape"), e.get("data_offsets")
        if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool)
                                                  and s >= 0 for s in shape):
            raise bad(f"tensor {name!r} has shape {shape!r}, expected a list of sizes >= 0")
        if not (isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)
                and 0 <= offs[0] <= offs[1] <= data_len):
            raise bad(f"tensor {name!r} has byte range {offs!r} outside the file's {data_len} "
                      "data bytes (truncated?)")
        numel = 1
        for s in shape:
            numel *= s
        if numel * _DTYPE_BYTES[e["dtype"]] != offs[1] - offs[0]:
            raise bad(f"tensor {name!r} of shape {shape} {e['dtype']} needs "
                      f"{numel * _DTYPE_BYTES[e['dtype']]} bytes, its range holds {offs[1] - offs[0]}")
        entries[name] = (e["dtype"], tuple(shape))
    return entries, meta


def read_header(path: PathLike, what: str = "file"):
    """``({name: (dtype, shape)}, metadata)`` of a safetensors file, reading only its header."""
    path = Path(path)
    if not path.is_file():
        raise _missing(path, what)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) == 8:
            n = struct.unpack("<Q", head)[0]
            head += f.read(min(n, MAX_HEADER_BYTES + 1))
    return parse_header(head, size, path, what)


def load_tensors(path: PathLike, what: str = "file", device="cpu", *,
                 require_digest: bool = False, data: Optional[bytes] = None,
                 with_metadata: bool = False):
    """All tensors of a safetensors file (never unpickles), content digest verified.

    ``require_digest``: a file without the digest is an error (files pyinterp wrote itself).
    ``data``: the file's bytes when already read (e.g. by :func:`read_verified`).
    Returns the tensors, or ``(tensors, metadata)`` with ``with_metadata``.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if data is None:
        data = read_bytes(path, what)
    _, meta = parse_header(data, len(data), path, what)
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as exc:
        raise CorruptFileError(f"{what} {path} is truncated or corrupt ({len(data)} bytes; "
                               f"safetensors says: {exc})", path) from None
    if DIGEST_KEY in meta:
        if tensor_digest(tensors, meta) != meta[DIGEST_KEY]:
            raise CorruptFileError(f"{what} {path} is damaged: its content does not match the "
                                   f"sha256 recorded in its metadata ({DIGEST_KEY})", path)
    elif require_digest:
        raise CorruptFileError(f"{what} {path} carries no content checksum ({DIGEST_KEY}); "
                               "expected a file written by pyinterp", path)
    tensors = {k: v.to(device) for k, v in tensors.items()}
    return (tensors, meta) if with_metadata else tensors


# ---------------------------------------------------------------------------------- paths
def inside(root: PathLike, name: Any, what: str = "path", source: Optional[PathLike] = None) -> Path:
    """``root / name`` for a ``name`` read from a file, refusing anything that leaves ``root``.

    Absolute paths, ``..`` components, empty names and links resolving outside ``root`` raise
    :class:`CorruptFileError` naming ``source`` (the file the name came from).
    """
    root = Path(root)
    src = source if source is not None else root
    if not isinstance(name, str) or not name or "\x00" in name:
        raise CorruptFileError(f"{what} {name!r} in {src} is not a file name", src)
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or rel.drive:
        raise CorruptFileError(f"{what} {name!r} in {src} leaves its directory {root}; expected "
                               "a name inside it", src)
    full = root / rel
    try:
        real_root = root.resolve()
        full.resolve().relative_to(real_root)
    except ValueError:
        raise CorruptFileError(f"{what} {name!r} in {src} resolves outside {root} (a link?)",
                               src) from None
    return full
