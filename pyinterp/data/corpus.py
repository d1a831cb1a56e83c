"""The default corpus: real English text that every Python installation carries.

Gathered at run time from the installed standard library: the documentation topics of
``pydoc_data.topics`` (the language reference text behind ``help()``) and the docstrings of
the standard library's modules, classes and functions, read with ``ast`` (nothing is
imported or executed). Deterministic for a given Python (files are visited in sorted order);
cached as JSONL in the cache directory (see :func:`pyinterp.data.cache_dir`). No text is
committed to the repository and nothing is downloaded.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
import sysconfig
import warnings
from pathlib import Path
from typing import Iterator, List, Optional, Union

from pyinterp._files import CorruptFileError, atomic_write_text, read_bytes, sha256_bytes
from pyinterp.data._cache import cache_dir

CORPUS_VERSION = 2  # 2: a first line with the sha256 of the documents (pyinterp._files)
_HEADER = "pyinterp-corpus"
# Test suites and vendored/tool directories: mostly code-like docstrings, skipped.
_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__",
              "lib2to3", "turtledemo", "venv", "ensurepip", "config-" }
_MIN_CHARS = 200  # documents shorter than this are dropped (one-line docstrings only)


def _stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def corpus_key() -> str:
    """Identifies the corpus a Python installation yields (version + stdlib location)."""
    h = hashlib.sha256(f"{CORPUS_VERSION}|{sys.version}|{_stdlib_dir()}".encode())
    return f"py{sys.version_info[0]}{sys.version_info[1]}-{h.hexdigest()[:12]}"


def _module_docs(path: Path) -> Optional[str]:
    try:
        src = path.read_text(encoding="utf-8")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old modules
            tree = ast.parse(src)
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return None
    parts = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc.split()) >= 4:
                parts.append(doc.strip())
    return "\n\n".join(parts) if parts else None


def _gather() -> Iterator[dict]:
    try:
        from pydoc_data import topics as _topics

        for name in sorted(_topics.topics):
            text = _topics.topics[name].strip()
            if len(text) >= _MIN_CHARS:
                yield {"source": f"pydoc_data.topics:{name}", "text": text}
    except ImportError:  # some distributions strip pydoc_data
        pass
    root = _stdlib_dir()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames
                             if d not in _SKIP_DIRS and not d.startswith("config-"))
        for fn in sorted(filenames):
            if not fn.endswith(".py"):
                continue
            p = Path(dirpath) / fn
            text = _module_docs(p)
            if text and len(text) >= _MIN_CHARS:
                yield {"source": str(p.relative_to(root)), "text": text}


def corpus_path(cache: Optional[Union[str, Path]] = None) -> Path:
    return cache_dir(cache) / f"corpus-{corpus_key()}.jsonl"


def build_default_corpus(cache: Optional[Union[str, Path]] = None, progress: bool = False) -> Path:
    """Gather the corpus into the cache (if not there yet) and return its JSONL path."""
    path = corpus_path(cache)
    if path.is_file():
        return path
    docs = _gather()
    if progress:
        from pyinterp._progress import progress as progress_bar

        docs = progress_bar(docs, desc="gathering stdlib documentation", unit="doc")
    lines = [json.dumps(d, ensure_ascii=False) for d in docs]
    if not lines:
        raise RuntimeError(f"found no documentation text under {_stdlib_dir()}: this Python "
                           "installation carries no standard-library sources or pydoc topics")
    body = "\n".join(lines) + "\n"
    header = {"format": _HEADER, "documents": len(lines),
              "sha256": sha256_bytes(body.encode("utf-8"))}
    atomic_write_text(path, json.dumps(header) + "\n" + body)
    return path


def _verified_lines(path: Path) -> List[str]:
    """The document lines of a cached corpus, checked against its header's sha256."""
    hint = "; delete it to gather the corpus again"
    data = read_bytes(path, "corpus cache")
    head, _, body = data.partition(b"\n")
    try:
        header = json.loads(head.decode("utf-8"))
        ok = isinstance(header, dict) and header.get("format") == _HEADER
    except (ValueError, RecursionError):
        ok = False
    if not ok:
        raise CorruptFileError(f"corpus cache {path} has no valid {_HEADER} header line{hint}", path)
    if sha256_bytes(body) != header.get("sha256"):
        raise CorruptFileError(f"corpus cache {path} is damaged: its documents do not match the "
                               f"sha256 in its header{hint}", path)
    lines = [line for line in body.decode("utf-8").split("\n") if line.strip()]
    if len(lines) != header.get("documents"):
        raise CorruptFileError(f"corpus cache {path} holds {len(lines)} documents, its header "
                               f"says {header.get('documents')}{hint}", path)
    return lines


class DefaultCorpus:
    """Iterable of documents (str) of the default corpus; re-iterable, deterministic.

    ``len()`` is the number of documents; ``sources()`` names where each came from.
    """

    def __init__(self, cache: Optional[Union[str, Path]] = None, progress: bool = False):
        self.path = build_default_corpus(cache, progress=progress)
        self._n: Optional[int] = len(_verified_lines(self.path))  # checked once, up front

    def _records(self) -> Iterator[dict]:
        for i, line in enumerate(_verified_lines(self.path)):
            try:
                rec = json.loads(line)
                if isinstance(rec, dict) and isinstance(rec.get("text"), str):
                    yield rec
                    continue
            except (ValueError, RecursionError):
                pass
            raise CorruptFileError(f"corpus cache {self.path}: document {i + 1} is not a JSON "
                                   "object with a 'text' string", self.path)

    def __iter__(self) -> Iterator[str]:
        for r in self._records():
            yield r["text"]

    def __len__(self) -> int:
        if self._n is None:
            self._n = sum(1 for _ in self._records())
        return self._n

    def sources(self) -> List[str]:
        return [r["source"] for r in self._records()]

    def text(self, separator: str = "\n\n") -> str:
        return separator.join(self)

    def __repr__(self) -> str:
        return f"DefaultCorpus({str(self.path)!r})"


def default_corpus(cache: Optional[Union[str, Path]] = None, progress: bool = False) -> DefaultCorpus:
    """The default corpus: documentation text of the installed Python standard library.

    Returns a re-iterable of documents (str). About 2 MB of English text on CPython 3.11;
    built on first use (~10 s) and cached under ``cache`` / ``$PYINTERP_CACHE`` /
    ``~/.cache/pyinterp``.
    """
    return DefaultCorpus(cache, progress=progress)
