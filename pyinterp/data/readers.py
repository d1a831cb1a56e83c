"""Readers for the user's own text: plain-text, JSONL and Parquet files or directories.

Every reader streams documents (str) one at a time, so corpora larger than memory work.
Bad input raises ``ValueError`` naming the file: empty files, binary files (NUL bytes or
invalid UTF-8), JSONL lines that are not objects with the text field, Parquet files without
the text column. Parquet needs ``pyarrow`` (imported only when a Parquet file is read).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator, List, Union

PathLike = Union[str, Path]
TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")


def _corpus_file(path: PathLike, text: bool = True) -> Path:
    """``path`` after checking that it is a non-empty file and, for ``text``, that its start
    holds no NUL bytes (a binary file)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such file: {str(p)!r}")
    if p.stat().st_size == 0:
        raise ValueError(f"{str(p)!r} is empty: a corpus file needs some text")
    if text:
        with open(p, "rb") as fb:
            if b"\x00" in fb.read(8192):
                raise ValueError(f"{str(p)!r} looks binary (it contains NUL bytes), not UTF-8 text")
    return p


def read_text(path: PathLike, split: str = "file", encoding: str = "utf-8") -> Iterator[str]:
    """Documents of a plain-text file: the whole file (``split="file"``), blank-line separated
    paragraphs (``"paragraph"``) or non-empty lines (``"line"``)."""
    if split not in ("file", "paragraph", "line"):
        raise ValueError(f"split must be 'file', 'paragraph' or 'line', got {split!r}")
    p = _corpus_file(path)
    n = 0
    try:
        with open(p, encoding=encoding) as f:
            if split == "file":
                text = f.read()
                if text.strip():
                    n += 1
                    yield text
            else:
                para: List[str] = []
                for line in f:
                    if "\x00" in line:
                        raise ValueError(f"{str(p)!r} looks binary (it contains NUL bytes)")
                    if split == "line":
                        if line.strip():
                            n += 1
                            yield line.rstrip("\n")
                    elif line.strip():
                        para.append(line)
                    elif para:
                        n += 1
                        yield "".join(para).rstrip("\n")
                        para = []
                if para:
                    n += 1
                    yield "".join(para).rstrip("\n")
    except UnicodeDecodeError as e:
        raise ValueError(f"{str(p)!r} is not valid {encoding} text (binary file?): {e}") from None
    if n == 0:
        raise ValueError(f"{str(p)!r} contains only whitespace: a corpus file needs some text")


def read_jsonl(path: PathLike, text_field: str = "text") -> Iterator[str]:
    """Documents ``record[text_field]`` of a JSONL file (one JSON object per line)."""
    p = _corpus_file(path)
    n = 0
    try:
        with open(p, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{str(p)!r} line {lineno} is not JSON: {e}") from None
                if not isinstance(rec, dict) or not isinstance(rec.get(text_field), str):
                    raise ValueError(f"{str(p)!r} line {lineno}: expected an object with a string "
                                     f"field {text_field!r}")
                n += 1
                yield rec[text_field]
    except UnicodeDecodeError as e:
        raise ValueError(f"{str(p)!r} is not valid UTF-8 (binary file?): {e}") from None
    if n == 0:
        raise ValueError(f"{str(p)!r} has no records")


def read_parquet(path: PathLike, text_field: str = "text", batch_rows: int = 1024) -> Iterator[str]:
    """Documents in column ``text_field`` of a Parquet file, read in record batches."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError("reading Parquet needs pyarrow: pip install 'pyinterp[data]' "
                          "(or pip install pyarrow)") from e
    p = _corpus_file(path, text=False)
    try:
        f = pq.ParquetFile(str(p))
    except Exception as e:  # pyarrow raises ArrowInvalid for non-Parquet bytes
        raise ValueError(f"{str(p)!r} is not a Parquet file: {e}") from None
    if text_field not in f.schema_arrow.names:
        raise ValueError(f"{str(p)!r} has no column {text_field!r} (columns: {f.schema_arrow.names})")
    n = 0
    for batch in f.iter_batches(batch_size=batch_rows, columns=[text_field]):
        for v in batch.column(0).to_pylist():
            if v is not None:
                if not isinstance(v, str):
                    raise ValueError(f"{str(p)!r} column {text_field!r} holds {type(v).__name__}, not str")
                n += 1
                yield v
    if n == 0:
        raise ValueError(f"{str(p)!r} has no rows in column {text_field!r}")


def _files(path: Path) -> List[Path]:
    known = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
    files = sorted(q for q in path.rglob("*") if q.is_file() and q.suffix.lower() in known)
    if not files:
        raise ValueError(f"directory {str(path)!r} has no {', '.join(known)} files")
    return files


def read_documents(paths: Union[PathLike, Iterable[PathLike]], text_field: str = "text",
                   split: str = "file") -> Iterator[str]:
    """Stream documents from files and directories (recursively, sorted), by suffix:
    .txt/.text/.md/.rst (plain text, ``split``), .jsonl/.ndjson, .parquet/.pq (``text_field``)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    for path in paths:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"no such file or directory: {str(p)!r}")
        for f in (_files(p) if p.is_dir() else [p]):
            suf = f.suffix.lower()
            if suf in JSONL_SUFFIXES:
                yield from read_jsonl(f, text_field)
            elif suf in PARQUET_SUFFIXES:
                yield from read_parquet(f, text_field)
            else:
                yield from read_text(f, split)


class Documents:
    """A re-iterable view of :func:`read_documents` (each iteration re-reads the files)."""

    def __init__(self, paths, text_field: str = "text", split: str = "file"):
        self.paths, self.text_field, self.split = paths, text_field, split

    def __iter__(self) -> Iterator[str]:
        return read_documents(self.paths, self.text_field, self.split)
