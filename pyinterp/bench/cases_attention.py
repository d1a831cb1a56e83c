"""Attention statistics: pyinterp.ops.attention_stats (one online-softmax pass, O(T) memory)
vs the materialising torch path (softmax(QK^T / sqrt(d)) then masked means over the (T, T)
pattern), and pyinterp.attention.head_scores vs TransformerLens run_with_cache + detect_head.

Issue targets (CPU, B=1, H=8, d_head=64, T=2048): >= 2x faster and >= 20x less peak memory
than the materialising path; at T=32768 the stats run where the materialising path needs more
memory than the machine has (its bytes are computed and reported, never attempted).
GPU (bf16, B=1, H=32, d_head=128, T=8192): <= 2x the time of torch's SDPA forward on the same
q, k (with v = k: SDPA also does the value product the statistics skip), and vs the
materialising path; all timed round-robin in the same run.

The materialising path is also timed as ``torch.compile(materialising_stats, dynamic=False)``
(compiled in the warm-up round), on CPU and GPU, wherever the eager path itself runs: not at
T=32768 (the eager path is never attempted there), and not for head_scores (TransformerLens's
run_with_cache + detect_head is a hooked model run with Python-side analysis, not one function
of tensors to compile).
"""
from __future__ import annotations

import math
import time

import torch

from pyinterp.bench.backends import auto_backend, timed_backends
from pyinterp.bench.suite import Group
from pyinterp.bench.timing import Row, peak_memory

RULES = ("prev", "first", "duplicate", "induction")


def materialising_stats(q, k, tokens, scale):
    """The straightforward torch path: the full (B, H, T, T) pattern, then masked reductions."""
    B, H, T, _ = q.shape
    s = torch.matmul(q, k.repeat_interleave(H // k.shape[1], 1).transpose(-1, -2)).mul_(scale)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril_()
    s.masked_fill_(~causal, float("-inf"))
    lse = torch.logsumexp(s, -1)
    p = s.sub_(lse[..., None]).exp_()  # in place: the pattern reuses the score buffer
    entropy = torch.special.entr(p).sum(-1)
    same = tokens[:, :, None] == tokens[:, None, :]  # (B, T, T): same[i, j] = tok[i] == tok[j]
    dup = same & ~causal.triu()  # j < i
    ind = torch.zeros_like(same)
    ind[:, :, 1:] = same[:, :, :-1]
    ind &= causal  # 1 <= j <= i, tokens[j - 1] == tokens[i]
    mass = {
        "prev": torch.nn.functional.pad(torch.diagonal(p, -1, -2, -1), (1, 0)),
        "first": p[..., 0],
        "duplicate": (p * dup[:, None]).sum(-1),
        "induction": (p * ind[:, None]).sum(-1),
    }
    return lse, entropy, mass


def materialising_bytes(B, H, T, elem=4) -> int:
    """Lower bound of the materialising path's memory: the scores/pattern buffer, one more
    (T, T) temporary for the masked products, and the (T, T) bool masks."""
    return 2 * B * H * T * T * elem + 3 * B * T * T


def _visible_peaks() -> None:
    """Make CPU peak memory visible to peak_memory's RSS sampling: glibc otherwise raises its
    mmap threshold after the first large free and keeps later (T, T) buffers in the heap, so
    repeated calls show no RSS growth. A fixed 1 MiB threshold maps (and unmaps) every large
    buffer. Process-wide and harmless for timing; a no-op off glibc."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def _inputs(B, H, T, d, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, d, generator=g).to(device)
    k = torch.randn(B, H, T, d, generator=g).to(device)
    tokens = torch.randint(0, 1000, (B, T), generator=g).to(device)
    return q, k, tokens


def _stats_calls(B, H, T, d, device, backends, dtype=torch.float32):
    from pyinterp import ops

    q, k, tokens = _inputs(B, H, T, d, device)
    q, k = q.to(dtype), k.to(dtype)
    scale = 1 / math.sqrt(d)
    compiled = torch.compile(materialising_stats, dynamic=False)
    fns = {"torch_materialising": lambda: materialising_stats(q, k, tokens, scale),
           "torch_compile": lambda: compiled(q, k, tokens, scale)}
    fns.update({b: (lambda b=b: ops.attention_stats(q, k, tokens, RULES, scale=scale, backend=b))
                for b in backends})
    if device.type == "cuda":  # the yardstick: SDPA forward on the same q, k
        fns["torch_sdpa"] = lambda: torch.nn.functional.scaled_dot_product_attention(
            q, k, k, is_causal=True)
    return fns


def _tl_calls(T, device):
    """head_scores vs TransformerLens (one run_with_cache, then detect_head per kind)."""
    import warnings

    import transformer_lens as tl
    from transformer_lens.head_detector import detect_head

    from pyinterp import attention

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = tl.HookedTransformerConfig(n_layers=2, d_model=512, n_heads=8, d_head=64, n_ctx=T + 1,
                                         d_vocab=1000, act_fn="relu", attn_only=True, seed=0,
                                         device=str(device))
        model = tl.HookedTransformer(cfg).eval()
    tokens = torch.randint(0, 1000, (1, T), generator=torch.Generator().manual_seed(0)).to(device)
    names = ("previous_token_head", "duplicate_token_head", "induction_head")

    def tl_path():
        with torch.no_grad():
            _, cache = model.run_with_cache(tokens, remove_batch_dim=True)
        model.to_tokens = lambda *a, **kw: tokens
        out = [detect_head(model, "-", n, cache=cache) for n in names]
        del model.to_tokens
        return out

    return {"transformer_lens": tl_path, "pyinterp": lambda: attention.head_scores(model, tokens)}


def _has_transformer_lens() -> bool:
    import importlib.util

    return importlib.util.find_spec("transformer_lens") is not None


def groups(device, quick=False) -> list[Group]:
    repeat = 3 if quick else 5
    backends = timed_backends("attention_stats", device.type)
    if device.type == "cuda":  # vs SDPA (the yardstick) and the materialising path
        cases = [(1, 8 if quick else 32, 2048 if quick else 8192, 128, torch.bfloat16),
                 (1, 8, 2048, 64, torch.float32)]
        extra = ("torch_sdpa",)
    else:
        cases = [(1, 8, 512 if quick else 2048, 64, torch.float32)]
        extra = ()
    out = [Group(f"AttentionStatsT{T}", ("torch_materialising", "torch_compile", *backends, *extra),
                 lambda c=(B, H, T, d, dt): _stats_calls(*c[:4], device, backends, c[4]),
                 peakmem=True, repeat=repeat,
                 info={"B": B, "H": H, "T": T, "d": d, "dtype": str(dt).replace("torch.", "")})
           for B, H, T, d, dt in cases]
    if device.type == "cpu" and not quick:
        # the long context: only ours runs (one call, minutes on 2 cores); the materialising
        # path's need is reported, never attempted (so no torch.compile of it either)
        auto = auto_backend("attention_stats", "cpu")
        out.append(Group("AttentionStatsLongContext", (auto,),
                         lambda: _stats_calls(1, 8, 32768, 64, device, [auto]), repeat=1,
                         asv=False, info={"B": 1, "H": 8, "T": 32768, "d": 64}))
    if _has_transformer_lens():
        T = 256 if quick else 1024
        # grad mode as a user calls them (TransformerLens's path disables grad itself)
        out.append(Group("HeadScores", ("transformer_lens", "pyinterp"), lambda: _tl_calls(T, device),
                         grad=True, repeat=repeat, info={"T": T}))
    return out


def _long_context_rows(group, device) -> list[Row]:
    from pyinterp import ops

    (name,) = group.impls
    B, H, T, d = (group.info[n] for n in "BHTd")
    q, k, tokens = _inputs(B, H, T, d, device)
    ops.attention_stats(q[:, :, :64], k[:, :, :64], tokens[:, :64], RULES)  # warm-up only
    t0 = time.perf_counter()
    peak = peak_memory(lambda: ops.attention_stats(q, k, tokens, RULES, scale=1 / math.sqrt(d)),
                       device)
    t = time.perf_counter() - t0
    need = materialising_bytes(B, H, T)
    shape = f"B={B} H={H} T={T} d={d}"
    return [Row("attention_stats", shape, "float32", f"pyinterp attention_stats [{name}]", t,
                peak_bytes=peak, extra={"backend": name, "materialising_bytes_needed": need,
                                        "peak_bytes_exact": peak,
                                        "materialising": f"infeasible: needs >= {need / 2**30:.1f} GiB"}),
            Row("attention_stats", shape, "float32", "torch materialising (T,T)", float("nan"),
                extra={"infeasible_bytes": need})]


def run(args) -> list[Row]:
    device = torch.device(getattr(args, "device", "cpu"))
    quick = getattr(args, "quick", False)
    _visible_peaks()
    rows = []
    for group in groups(device, quick):
        if group.name == "AttentionStatsLongContext":
            rows += _long_context_rows(group, device)
            continue
        fns, t = group.time(device)
        peak = {n: peak_memory(fn, device) for n, fn in fns.items()}
        if group.name == "HeadScores":
            shape = f"TL attn-only L=2 H=8 d_head=64 T={group.info['T']}"
            rows += [
                Row("head_scores", shape, "float32", "TransformerLens run_with_cache+detect_head",
                    t["transformer_lens"], peak_bytes=peak["transformer_lens"]),
                Row("head_scores", shape, "float32", "pyinterp attention.head_scores",
                    t["pyinterp"], baseline="TransformerLens", baseline_seconds=t["transformer_lens"],
                    peak_bytes=peak["pyinterp"])]
            continue
        B, H, T, d = (group.info[n] for n in "BHTd")
        shape, dname = f"B={B} H={H} T={T} d={d}", group.info["dtype"]
        t_mat = t["torch_materialising"]
        # On the GPU every row is against SDPA (the yardstick); on the CPU against the
        # materialising path.
        base_name, base_label = (("torch_sdpa", "torch SDPA forward") if "torch_sdpa" in t
                                 else ("torch_materialising", "torch materialising"))
        if "torch_sdpa" in t:
            rows.append(Row("attention_stats", shape, dname, "torch SDPA forward (v = k), yardstick",
                            t["torch_sdpa"], peak_bytes=peak["torch_sdpa"]))
        rows.append(Row("attention_stats", shape, dname, "torch materialising (T,T)", t_mat,
                        baseline=base_label if base_name != "torch_materialising" else None,
                        baseline_seconds=t[base_name] if base_name != "torch_materialising" else None,
                        peak_bytes=peak["torch_materialising"]))
        rows.append(Row("attention_stats", shape, dname, "torch.compile: materialising (T,T)",
                        t["torch_compile"], baseline=base_label, baseline_seconds=t[base_name],
                        peak_bytes=peak["torch_compile"]))
        for name in group.impls:
            if name in ("torch_materialising", "torch_compile", "torch_sdpa"):
                continue
            rows.append(Row("attention_stats", shape, dname, f"pyinterp attention_stats [{name}]",
                            t[name], baseline=base_label, baseline_seconds=t[base_name],
                            peak_bytes=peak[name],
                            extra={"backend": name, "x_materialising": t_mat / t[name],
                                   "x_compile": t["torch_compile"] / t[name],
                                   "materialising_bytes_needed": materialising_bytes(B, H, T)}))
    return rows
