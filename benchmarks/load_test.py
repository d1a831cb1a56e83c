"""Load test: the streaming persona projection monitor and attention statistics (head scores
through attention_stats) over many sequences in one process, with RSS measured over time.

    python benchmarks/load_test.py                       # 10,000 sequences (the reported run)
    python benchmarks/load_test.py --sequences 2000 --batch 50

Prints one line per report interval (sequences done, RSS in MiB, seconds) and a summary:
RSS after warm-up, at the end, the growth and the least-squares slope in KiB per 1,000
sequences. tests/test_load.py runs the same loop on fewer sequences and asserts no growth.
"""
from __future__ import annotations

import argparse
import gc
import time


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def slope_kib_per_1k(points) -> float:
    """Least-squares slope of RSS (MiB) against sequences, in KiB per 1,000 sequences."""
    n = len(points)
    if n < 2:
        return 0.0
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    return (cov / var) * 1024 * 1000 if var else 0.0


def run(sequences: int = 10_000, batch: int = 100, ctx: int = 32, every: int = 1000,
        backend=None, threads: int = 1, verbose: bool = True) -> dict:
    """Monitor + head scores over ``sequences`` random sequences; returns the RSS trace."""
    import torch

    from pyinterp import attention
    from pyinterp.models import Transformer, TransformerConfig
    from pyinterp.persona.projection_monitor import ProjectionMonitor

    torch.set_num_threads(threads)
    cfg = TransformerConfig(n_layers=2, d_model=64, n_heads=4, d_vocab=512, n_ctx=ctx,
                            act_fn="gelu", seed=0)
    model = Transformer(cfg).eval()
    vectors = torch.randn(3, cfg.d_model, generator=torch.Generator().manual_seed(1))
    mon = ProjectionMonitor(model, vectors, backend=backend)
    gen = torch.Generator().manual_seed(0)
    mean_proj = torch.zeros(cfg.n_layers, 3)
    score_sum = None
    trace, done, t0 = [], 0, time.perf_counter()
    warmup = None
    with torch.no_grad():
        while done < sequences:
            b = min(batch, sequences - done)
            tokens = torch.randint(0, cfg.d_vocab, (b, ctx), generator=gen)
            with mon:
                model(tokens)
            mean_proj += mon.mean().sum(1).cpu()
            mon.reset()
            scores = attention.head_scores(model, tokens, backend=backend)
            s = torch.stack([scores[k] for k in sorted(scores)]) * b
            score_sum = s if score_sum is None else score_sum + s
            done += b
            if done % every == 0 or done == sequences:
                gc.collect()
                point = (done, rss_mib(), time.perf_counter() - t0)
                trace.append(point)
                if warmup is None:
                    warmup = point[1]
                if verbose:
                    print(f"{point[0]:>8d} sequences  RSS {point[1]:8.1f} MiB  {point[2]:7.1f} s",
                          flush=True)
    steady = trace[1:] if len(trace) > 2 else trace
    out = {"sequences": sequences, "batch": batch, "ctx": ctx, "trace": trace,
           "rss_start_mib": trace[0][1], "rss_end_mib": trace[-1][1],
           "rss_max_mib": max(p[1] for p in trace), "growth_mib": trace[-1][1] - trace[0][1],
           "slope_kib_per_1k": slope_kib_per_1k(steady),
           "seconds": trace[-1][2],
           "mean_projection": (mean_proj / sequences).tolist(),
           "mean_scores": (score_sum / sequences).mean().item()}
    if verbose:
        print(f"RSS after first {trace[0][0]} sequences: {out['rss_start_mib']:.1f} MiB; end: "
              f"{out['rss_end_mib']:.1f} MiB; growth {out['growth_mib']:+.1f} MiB; slope "
              f"{out['slope_kib_per_1k']:+.1f} KiB per 1,000 sequences; {out['seconds']:.1f} s")
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sequences", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--ctx", type=int, default=32)
    p.add_argument("--every", type=int, default=1000)
    p.add_argument("--backend", default=None)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    run(a.sequences, a.batch, a.ctx, a.every, a.backend, a.threads)


if __name__ == "__main__":
    main()
