"""Shared by the tiny-scale paper tests: run a paper once per module."""
import torch

from pyinterp import experiments


def tiny_run(tmp_path_factory, paper: str):
    """Yields (out_dir / paper, metrics.json contents) of a tiny-scale CPU run (for a module fixture)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny shapes run fastest on one thread (no oversubscription)
    try:
        out = tmp_path_factory.mktemp("runs")
        data = experiments.run_paper(paper, scale="tiny", device="cpu", out=out)
        yield out / paper, data
    finally:
        torch.set_num_threads(threads)
