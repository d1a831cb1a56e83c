"""Checkpoint directories that hold one run: run identity, a writer lock, moving a run aside.

Used by the SAE trainer (:mod:`pyinterp.sae.checkpoint`), :func:`pyinterp.models.train`
and the experiments' checkpointed steps. The rules (docs/decisions/checkpoint-run-identity.md):

* Every checkpoint records the **run id** of the run that wrote it: a hash of the run's
  configuration plus its start time (:func:`new_run_id`). Resuming continues the run id.
* A writer takes the directory's **advisory lock** (:class:`WriterLock`, ``flock`` on
  ``<dir>/.lock``) before it writes anything; a second writer fails at once with
  :class:`DirectoryLockedError` naming the holder. The kernel drops the lock when the holder
  dies, so a killed run never blocks the next one.
* Holding the lock, the writer removes the temporary files and folders killed writers left
  (:func:`pyinterp._files.remove_stale_temps`).
* A directory holding a **different run** is never written into: that is a
  :class:`RunMismatchError`, unless the caller asked to start fresh, which moves the old run
  to ``<dir>/superseded/<run id>-<time>/`` (:func:`move_aside`); nothing is deleted.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
import warnings
from pathlib import Path
from typing import Callable, Iterable, Optional

from pyinterp._files import (
    CorruptFileError,
    DiskFullError,
    fsync_dir,
    read_json,
    remove_stale_temps,
    temp_path,
)

LOCK_FILE = ".lock"
SUPERSEDED = "superseded"


class RunMismatchError(ValueError):
    """A checkpoint directory holds a run other than the one asked for."""


class DirectoryLockedError(RuntimeError):
    """Another process (or another object in this one) is writing the directory."""


def config_hash(config: dict) -> str:
    """A short stable hash of a JSON-able configuration."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def new_run_id(config: dict) -> str:
    """``<config hash>-<UTC start time>-<random>``: unique per start, names the config."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{config_hash(config)}-{stamp}-{os.urandom(2).hex()}"


class WriterLock:
    """Exclusive advisory lock on a directory (``<dir>/.lock``), taken without waiting.

    ``with WriterLock(dir, "checkpoint directory"):`` ... or ``acquire()`` / ``release()``.
    Re-entrant for the same object. On acquiring, stale temporaries in the directory are
    removed.
    """

    def __init__(self, directory, what: str = "directory"):
        self.directory = Path(directory)
        self.what = what
        self._fd: Optional[int] = None
        self._depth = 0

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "WriterLock":
        if self._fd is not None:
            self._depth += 1
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / LOCK_FILE
        fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            _lock(fd)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DirectoryLockedError(
                f"{self.what} {self.directory} is being written by another writer ({holder}); "
                "wait for it to finish, or use another directory") from None
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, info, 0)
        self._fd, self._depth = fd, 1
        remove_stale_temps(self.directory)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        fd, self._fd = self._fd, None
        try:
            _unlock(fd)
        finally:
            os.close(fd)

    def __enter__(self) -> "WriterLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        if self._fd is not None:
            self._depth = 1
            self.release()


def _lock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _unlock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:
        import msvcrt

        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_UN)


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


def move_aside(root, entries: Iterable[Path], run_id: Optional[str]) -> Optional[Path]:
    """Move ``entries`` (paths directly under ``root``) into a new
    ``root/superseded/<run id>-<time>/`` folder; returns it (None when there is nothing)."""
    entries = [Path(e) for e in entries if Path(e).exists() or Path(e).is_symlink()]
    if not entries:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(run_id or "unknown"))
    dest = Path(root) / SUPERSEDED / f"{safe}-{stamp}"
    n = 0
    while dest.exists():
        n += 1
        dest = Path(root) / SUPERSEDED / f"{safe}-{stamp}-{n}"
    dest.mkdir(parents=True)
    for e in entries:
        os.replace(e, dest / e.name)
    fsync_dir(dest)
    fsync_dir(root)
    return dest


def claim(root, run_id: str, step_dirs: Iterable[Path], run_of: Callable[[Path], str],
          fresh: bool = False, hint: str = "", also: Iterable[Path] = ()) -> Optional[Path]:
    """Make sure ``root`` holds no checkpoint of a run other than ``run_id`` (call it holding
    the lock). ``step_dirs``: the checkpoint folders in ``root``; ``run_of(folder)``: the run
    id recorded there. Another run is a :class:`RunMismatchError` saying so, or with
    ``fresh`` is moved (with the files ``also``, e.g. its pointer) to ``root/superseded/``;
    returns where it went (None when nothing moved)."""
    root = Path(root)
    others = [d for d in step_dirs if run_of(d) != run_id]
    if not others:
        return None
    other = run_of(others[-1])
    if not fresh:
        raise RunMismatchError(
            f"checkpoint directory {root} holds another run (run id {other}, newest checkpoint "
            f"{others[-1].name}); this run is {run_id}. {hint}Use another directory, or pass "
            f"fresh=True to move the old run to {root / SUPERSEDED}/ (nothing is deleted)")
    return move_aside(root, others + [Path(a) for a in also], other)


def pick_latest(pointer: Path, pointed: Callable[[], Optional[Path]],
                complete: Callable[[Path], bool], step_dirs: list,
                verify: Callable[[Path], object]) -> Optional[Path]:
    """The newest checkpoint folder: the one ``pointer`` names (``pointed()``: that folder,
    None when there is no pointer; raises when the pointer is unreadable).

    When the pointer is missing, damaged or names a missing/incomplete folder while complete
    ``step_dirs`` (oldest first) exist, the newest that passes ``verify`` is used, with a
    warning; if none does, :class:`CorruptFileError`. None only when there is no checkpoint.
    """
    try:
        d = pointed()
        if d is not None and complete(d):
            return d
        problem = (f"{pointer} names {d.name}, which is missing or incomplete" if d is not None
                   else f"{pointer} is missing")
    except (OSError, CorruptFileError) as exc:
        problem = str(exc)
    found = [s for s in step_dirs if complete(s)]
    if not found:
        if pointer.exists():
            raise CorruptFileError(f"{problem}, and {pointer.parent} holds no complete "
                                   "checkpoint folder", pointer)
        return None
    errors = []
    for s in reversed(found):
        try:
            verify(s)
        except CorruptFileError as exc:
            errors.append(str(exc))
            continue
        warnings.warn(f"{problem}; using {s}, the newest checkpoint folder that verifies",
                      stacklevel=3)
        return s
    raise CorruptFileError(f"{problem}, and no checkpoint folder under {pointer.parent} "
                           "verifies: " + "; ".join(errors), pointer)


# ------------------------------------------------------------------ step folders
def step_dirs(root, pattern: re.Pattern) -> list:
    """The folders directly in ``root`` whose names match ``pattern``, oldest (by name) first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if pattern.match(p.name) and p.is_dir())


def recorded_run(state_file: Path, legacy: str) -> str:
    """The run id a checkpoint's state file records (unverified: for telling runs apart only;
    ``legacy`` when it predates run ids, "unreadable" when it cannot be read)."""
    try:
        meta = read_json(state_file, "checkpoint state", checksum="ignore")
    except (OSError, CorruptFileError):
        return "unreadable"
    run = meta.get("run_id", legacy)
    return run if isinstance(run, str) else "unreadable"


def write_step(final: Path, fill: Callable[[Path], None], write_pointer: Callable[[], None],
               previous: Optional[Path]) -> Path:
    """Create the checkpoint folder ``final`` atomically: ``fill(tmp)`` writes its files into
    a temporary folder beside it, which is renamed into place (replacing an older copy of the
    same step of this run), then ``write_pointer()`` runs. On failure the temporary folder is
    removed; a full disk is a :class:`DiskFullError` naming the checkpoint and saying that
    ``previous`` (the checkpoint before it) is intact."""
    import shutil

    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(final)
    tmp.mkdir()
    try:
        fill(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
        write_pointer()
    except DiskFullError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DiskFullError(exc.errno, f"{os.strerror(exc.errno)} while writing the checkpoint "
                            f"{final} (at {Path(exc.filename).name}); free space or write "
                            "elsewhere; the previous checkpoint "
                            f"{previous.name if previous else '(none)'} is intact",
                            str(final)) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def rotate(folders: list, step_of: Callable[[Path], int], run_of: Callable[[Path], str],
           run_id: str, step: int, keep: int) -> None:
    """Delete run ``run_id``'s checkpoint folders older than ``step`` beyond the newest
    ``keep - 1`` of them (the one at ``step`` makes ``keep``); never another run's, never a
    newer one."""
    import shutil

    ours = [d for d in folders if step_of(d) < step and run_of(d) == run_id]
    for old in ours[:max(0, len(ours) - (max(1, keep) - 1))]:
        shutil.rmtree(old, ignore_errors=True)
