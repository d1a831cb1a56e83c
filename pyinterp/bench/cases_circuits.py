"""Attribution graphs: :func:`pyinterp.circuits.attribute` (streamed, sparse) against the dense
reference (:func:`pyinterp.circuits.reference.dense_attribution`: circuit-tracer's method, a
dense (nodes x nodes) adjacency filled by one backward pass per target), same model, CLT and
prompt, in the same run.

Model: the circuits paper's quick shape (2 layers, d_model 64, 4 heads, GELU MLP 256, rotary,
vocab 1024) with random weights; CLT: 512 TopK features per layer (k=16), random weights; prompt:
T random tokens. Node counts depend only on T, the layers and k (16 active features per layer
and position), so random weights cost what trained ones do.

The default readout reads feature edges through the backward of ``ops.sparse_decode`` (the
sparse kernels); the ``readout=gather`` row gathers each position's decoder rows once for all
targets of a batch and does one batched product instead.

Each measurement runs in a fresh process (peak memory is the process's RSS growth during the
call, sampled; nothing earlier in the process hides it), rounds interleaved (ours, dense, ours,
dense, ...). Both must give the same graph (kept nodes; influence to float32 rounding).

    pyinterp bench circuits [--quick] [--threads N]
    python -m pyinterp.bench.cases_circuits --child ours --T 2048 --threads 2   # one measurement

The asv suite (benchmarks/benchmarks/circuits.py) is generated from :func:`groups`: the same
model, CLT and prompts, timed in asv's own processes (its peakmem is asv's whole-process peak,
so the table above, with one fresh process per measurement, is the memory figure to quote).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import torch

from pyinterp.bench.suite import Group
from pyinterp.bench.timing import Row, peak_memory

SHAPE = dict(n_layers=2, d_model=64, n_heads=4, d_mlp=256, d_vocab=1024, n_ctx=64)
D_SAE, K = 512, 16


def build(T: int, seed: int = 0):
    """(model, CLT, tokens (T,)) of the benchmark, deterministic in ``seed``."""
    from pyinterp.models import Transformer, TransformerConfig
    from pyinterp.sae import CrossLayerTranscoder

    cfg = TransformerConfig(act_fn="gelu", positional="rotary", seed=seed,
                            init_std=0.8 / math.sqrt(SHAPE["d_model"]), **SHAPE)
    model = Transformer(cfg).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    L = SHAPE["n_layers"]
    clt = CrossLayerTranscoder(L, SHAPE["d_model"], D_SAE, activation="topk", k=K, seed=seed,
                               hook_names=[f"blocks.{l}.ln2.hook_normalized" for l in range(L)],
                               hook_names_out=[f"blocks.{l}.hook_mlp_out" for l in range(L)]).eval()
    with torch.no_grad():  # non-zero encoder biases, as a trained CLT has
        clt.b_enc.copy_(0.05 * torch.randn(clt.b_enc.shape, generator=torch.Generator().manual_seed(seed)))
    tokens = torch.randint(0, SHAPE["d_vocab"], (T,), generator=torch.Generator().manual_seed(seed + 1))
    return model, clt, tokens


def _calls(T: int, impls: tuple[str, ...]) -> dict:
    from pyinterp import circuits
    from pyinterp.circuits.reference import dense_attribution

    model, clt, tokens = build(T)
    dic = circuits.as_dictionary(clt)
    calls = {"pyinterp": lambda: circuits.attribute(model, dic, tokens),
             "pyinterp_gather": lambda: circuits.attribute(model, dic, tokens, readout="gather"),
             "dense_reference": lambda: dense_attribution(model, dic, tokens, dtype=torch.float32)}
    return {impl: calls[impl] for impl in impls}


def groups(device, quick=False) -> list[Group]:
    """Attribution of one T-token prompt: against the dense reference where it fits a
    repeated benchmark (T=64), then ours alone as T grows. CPU only."""
    sizes = {64: ("dense_reference", "pyinterp", "pyinterp_gather"),
             256: ("pyinterp", "pyinterp_gather"), 1024: ("pyinterp",)}
    if quick:
        sizes = {64: sizes[64]}
    return [Group(f"AttributeT{T}", impls, lambda T=T, impls=impls: _calls(T, impls), grad=True,
                  peakmem=True, repeat=3, timeout=900, info={"T": T})
            for T, impls in sizes.items()]


def child(impl: str, T: int, threads: int, out: str) -> None:
    """One measurement in this (fresh) process; writes JSON to ``out``."""
    import time

    from pyinterp import circuits
    from pyinterp.circuits.reference import dense_attribution

    torch.set_num_threads(threads)
    model, clt, tokens = build(T)
    dic = circuits.as_dictionary(clt)
    # warm-up on 8 tokens: imports, kernel libraries and lazy initialisation are not the call's
    readout = "gather" if impl == "ours_gather" else "sparse"
    if impl != "dense":
        circuits.attribute(model, dic, tokens[:8], readout=readout)
    else:
        dense_attribution(model, dic, tokens[:8], dtype=torch.float32)
    res = {}

    def run():
        t0 = time.perf_counter()
        if impl != "dense":
            g = circuits.attribute(model, dic, tokens, readout=readout)
            res["influence"], res["node_mask"] = g.influence, g.node_mask
            res["n_nodes"], res["rows"] = g.n_nodes, g.stats["rows_computed"]
            res["kept"], res["edges"] = g.stats["n_kept_nodes"], g.stats["n_edges"]
            res["scores"] = g.scores
        else:
            d = dense_attribution(model, dic, tokens, dtype=torch.float32)
            res["influence"], res["node_mask"] = d["influence"], d["node_mask"]
            res["n_nodes"], res["rows"] = d["n_nodes"], d["n_features"] + int(d["logit_tokens"].numel())
            res["kept"] = int(d["node_mask"].sum())
            res["edges"] = int((d["edge_mask"] & (d["adjacency"] != 0)).sum())
            res["scores"] = {"replacement": d["replacement"], "completeness": d["completeness"]}
        res["seconds"] = time.perf_counter() - t0

    peak = peak_memory(run)
    with open(out, "w") as f:
        json.dump({"impl": impl, "T": T, "seconds": res["seconds"], "peak_bytes": peak, "n_nodes": res["n_nodes"],
                   "rows": res["rows"], "kept": res["kept"], "edges": res["edges"], "scores": res["scores"],
                   "influence": res["influence"].float().tolist(), "node_mask": res["node_mask"].tolist()}, f)


def measure(impl: str, T: int, threads: int) -> dict:
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        subprocess.run([sys.executable, "-m", "pyinterp.bench.cases_circuits", "--child", impl, "--T", str(T),
                        "--threads", str(threads), "--out", path], check=True, env=env)
        with open(path) as f:
            return json.load(f)
    finally:
        os.unlink(path)


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])


def run(args) -> list:
    threads = getattr(args, "threads", None) or torch.get_num_threads()
    quick = getattr(args, "quick", False)
    T = 64 if quick else 256
    rounds = 1 if quick else 2
    got = {"ours": [], "dense": []}
    for _ in range(rounds):
        for impl in ("ours", "dense"):
            got[impl].append(measure(impl, T, threads))
    a, b = got["ours"][0], got["dense"][0]
    diff = max(abs(x - y) for x, y in zip(a["influence"], b["influence"]))
    same = a["node_mask"] == b["node_mask"]
    shape = f"T={T} L=2 d=64 CLT 2x{D_SAE} k={K} ({a['n_nodes']} nodes)"
    dense_s = _median([r["seconds"] for r in got["dense"]])
    dense_peak = max(r["peak_bytes"] for r in got["dense"])
    rows = [Row("attribute", shape, "float32", "dense reference", dense_s, peak_bytes=dense_peak,
                extra={"rows": b["rows"], "kept_nodes": b["kept"], "edges": b["edges"]})]
    ours_s = _median([r["seconds"] for r in got["ours"]])
    rows.append(Row("attribute", shape, "float32", "pyinterp.circuits", ours_s, baseline="dense reference",
                    baseline_seconds=dense_s, peak_bytes=max(r["peak_bytes"] for r in got["ours"]),
                    extra={"rows": a["rows"], "kept_nodes": a["kept"], "edges": a["edges"],
                           "same_kept_nodes": same, "max_influence_diff": diff,
                           "memory_ratio": max(r["peak_bytes"] for r in got["ours"]) / max(dense_peak, 1)}))
    sp = measure("ours_gather", T, threads)  # feature edges by a gather + batched product
    rows.append(Row("attribute", shape, "float32", "pyinterp.circuits readout=gather", sp["seconds"],
                    baseline="dense reference", baseline_seconds=dense_s, peak_bytes=sp["peak_bytes"],
                    extra={"same_kept_nodes": sp["node_mask"] == b["node_mask"]}))
    for T2 in ((256,) if quick else (1024, 2048)):
        r = measure("ours", T2, threads)
        n = r["n_nodes"]
        rows.append(Row("attribute", f"T={T2} L=2 d=64 CLT 2x{D_SAE} k={K} ({n} nodes)", "float32",
                        "pyinterp.circuits", r["seconds"], peak_bytes=r["peak_bytes"],
                        extra={"rows": r["rows"], "kept_nodes": r["kept"], "edges": r["edges"],
                               "dense_adjacency_GiB": n * n * 4 / 2**30}))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pyinterp.bench.cases_circuits")
    p.add_argument("--child", choices=["ours", "ours_gather", "dense"], required=True)
    p.add_argument("--T", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    child(a.child, a.T, a.threads, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
