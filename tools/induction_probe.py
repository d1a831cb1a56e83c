"""Probe how fast a small attention-only model forms induction heads (the table in
docs/decisions/induction-repeated-spans.md was made with this script).

Trains one model with a plain loop (AdamW, linear warm-up, constant lr, clipping 1.0) on a
mix of default-corpus rows (byte tokenizer) and repeated random-token rows, and prints every
``--every`` steps: the best induction score per layer (TransformerLens-style probe: one span
repeated once in noise, period (n_ctx-8)/2), the loss on that probe's second copy, and, with
``--periodic``, the loss on tiled rows of that period.

    python tools/induction_probe.py --layers 2 --periodic --init 0.1 --share 0.5
    python tools/induction_probe.py --layers 2 --init 0.02          # the old recipe: no heads
"""
import argparse
import time

import torch

from pyinterp import attention
from pyinterp.data import periodic_tokens, repeated_tokens
from pyinterp.experiments import _lm
from pyinterp.models import Transformer, TransformerConfig


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--n-ctx", type=int, default=32)
    p.add_argument("--rep-vocab", type=int, default=64, help="token ids of the repeated rows and probes")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--share", type=float, default=1.0, help="share of each batch made of repeated rows")
    p.add_argument("--positional", default="learned", choices=("learned", "rotary"))
    p.add_argument("--init", type=float, default=0.02, help="init std (0.8/sqrt(d_model) = TransformerLens)")
    p.add_argument("--periodic", action="store_true",
                   help="repeated rows tile a segment with a random period and phase (else one span repeated "
                        "once at a random offset)")
    p.add_argument("--fixed-period", action="store_true", help="span rows: always the probe's period")
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def main():
    a = parse_args()
    torch.set_num_threads(a.threads)
    vocab = 257  # byte tokenizer
    cfg = TransformerConfig(n_layers=a.layers, d_model=a.d_model, n_heads=a.heads, d_vocab=vocab, n_ctx=a.n_ctx,
                            act_fn=None, positional=a.positional, seed=a.seed, init_std=a.init)
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / a.warmup))
    seq = (a.n_ctx - 8) // 2
    n_rep = round(a.batch * a.share)
    corpus = _lm.corpus_rows(vocab, a.n_ctx, 4000, a.seed, "bytes") if n_rep < a.batch else None
    probe = repeated_tokens(16, seq, a.rep_vocab, seed=3, n_ctx=2 * seq + 8)
    mask = probe.induction_mask()[:, 1:].float()
    tiled = periodic_tokens(16, a.n_ctx, seq, seq, a.rep_vocab, seed=5)
    t0, loss = time.time(), None
    for step in range(a.steps + 1):
        if step % a.every == 0:
            model.eval()
            with torch.no_grad():
                ind = attention.induction_scores(model, seq_len=seq, batch=16, seed=3, n_ctx=2 * seq + 8,
                                                 d_vocab=a.rep_vocab).scores
                rep_loss = float((attention.per_token_loss(model, probe.tokens) * mask).sum() / mask.sum())
                tiled_loss = float(attention.per_token_loss(model, tiled)[:, seq:].mean())
            print(f"step {step:5d}  train loss {loss if loss is not None else float('nan'):.3f}  "
                  f"probe loss {rep_loss:.3f}  tiled loss {tiled_loss:.3f}  "
                  f"best induction by layer {[round(float(x), 3) for x in ind.max(1).values]}  "
                  f"({time.time() - t0:.0f} s)", flush=True)
            model.train()
        if step == a.steps:
            break
        g = torch.Generator().manual_seed(step * 7 + 1)
        parts = []
        if corpus is not None:
            parts.append(corpus[torch.randint(0, corpus.shape[0], (a.batch - n_rep,), generator=g)])
        if n_rep and a.periodic:
            parts.append(periodic_tokens(n_rep, a.n_ctx, max(2, seq // 2), seq, a.rep_vocab, generator=g))
        elif n_rep:
            for r in range(n_rep):
                period = seq if a.fixed_period else int(torch.randint(max(2, seq // 2), seq + 1, (1,), generator=g))
                parts.append(repeated_tokens(1, period, a.rep_vocab, n_ctx=a.n_ctx, seed=step * 1000 + r + 1).tokens)
        batch_loss = model.loss(torch.cat(parts))
        opt.zero_grad()
        batch_loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss = float(batch_loss.detach())


if __name__ == "__main__":
    main()
