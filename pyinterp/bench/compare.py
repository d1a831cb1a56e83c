"""The side-by-side table: op, shape, dtype, implementation, median time, GB/s, and ratios
against the baseline (torch eager), torch.compile of it and the roofline, all measured in the
same run.

    pyinterp bench [FAMILY ...] [--quick] [--device cpu|cuda] [--threads N] [--json FILE]
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

# Op families with a ``pyinterp.bench.cases_<family>`` module.
FAMILIES = ["solu", "sae_train", "attention", "sae", "persona", "models", "integrations",
            "dictionaries", "dispatch", "circuits"]


def _fmt(v, spec, suffix=""):
    return "-" if v is None else format(v, spec) + suffix


def _vs_compiled(row):
    """torch.compile's time / this row's, where the family timed a compiled baseline."""
    return row.extra.get("x_compile", row.extra.get("vs_compiled"))


def format_table(rows) -> str:
    header = ["op", "shape", "dtype", "impl", "median ms", "GB/s", "baseline", "x baseline",
              "x compile", "x roofline", "peak MiB"]
    body = []
    for r in rows:
        body.append([
            r.op, r.shape, r.dtype, r.impl, _fmt(r.seconds * 1e3, ".3f"), _fmt(r.gbps, ".1f"),
            r.baseline or "-", _fmt(r.speedup, ".2f", "x"), _fmt(_vs_compiled(r), ".2f", "x"),
            _fmt(r.vs_roofline, ".2f"),
            _fmt(None if r.peak_bytes is None else r.peak_bytes / 2**20, ".1f"),
        ])
    widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(header)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths)),
             "-|-".join("-" * w for w in widths)]
    lines += [" | ".join(c.ljust(w) for c, w in zip(row, widths)) for row in body]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pyinterp bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("families", nargs="*", help=f"op families (default: all of {FAMILIES})")
    p.add_argument("--quick", action="store_true", help="smaller shapes and fewer repeats")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads (CPU)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    unknown = [f for f in args.families if f not in FAMILIES]
    if unknown:
        print(f"unknown family {unknown}; choose from {FAMILIES}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for family in args.families or FAMILIES:
        module = importlib.import_module(f"pyinterp.bench.cases_{family}")
        rows += module.run(args)
    print(format_table(rows))
    if args.json:
        from pyinterp._files import atomic_write_json

        atomic_write_json(args.json, [r.as_dict() for r in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
