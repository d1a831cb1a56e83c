"""The trainer's Adam and its optimizer-in-backward mode.

:class:`Adam` is ``torch.optim.Adam(foreach=False)`` (same state, same state dict, the same
bits: tests/test_sae_optim.py) without parameter-sized temporaries. torch's single-tensor
update forms the denominator ``sqrt(v) / sqrt(1 - beta2^t) + eps`` as two temporaries the size
of the parameter, i.e. twice the largest parameter on top of the gradients (320 MiB for a
160 MiB CLT decoder); every operation after the in-place moment updates is elementwise, so
:class:`Adam` runs them chunk by chunk and keeps one chunk of temporaries.

:func:`in_backward` fuses the optimizer step into backward (torch's
``register_post_accumulate_grad_hook``, the pattern of torchtune's optimizer-in-backward):
each parameter is updated as soon as autograd has accumulated its whole gradient, and that
gradient is freed right away, so at most the gradients still being computed are alive, not
all of them. The update reads only the parameter's own gradient and state, so the result is
the same as a step after backward, bit for bit; a global gradient-norm clip needs every
gradient first and cannot be combined with it (docs/decisions/sae-optimizer-in-backward.md).
Autograd's version counters make it safe: a backward node that still needs a parameter the
hook has already updated raises instead of computing with the new values.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Optional

import torch

# Elements per chunk of the denominator (512 KiB of float32: cache-sized).
CHUNK = 1 << 17


class Adam(torch.optim.Adam):
    """``torch.optim.Adam(params, lr, betas, eps, foreach=False)`` whose step allocates no
    parameter-sized temporary; :meth:`step_param` updates one parameter (optimizer in
    backward). No weight decay, amsgrad, maximize or capturable (the trainer uses none)."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, *,
                 chunk: int = CHUNK):
        super().__init__(params, lr=lr, betas=betas, eps=eps, foreach=False)
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.chunk = int(chunk)

    @torch.no_grad()
    def step(self, closure: Optional[Callable] = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    @torch.no_grad()
    def step_param(self, p: torch.Tensor) -> None:
        """Update parameter ``p`` from its gradient now (as :meth:`step` would)."""
        for group in self.param_groups:
            if any(q is p for q in group["params"]):
                if p.grad is not None:
                    self._update(p, group)
                return
        raise ValueError("step_param: the tensor is not one of this optimizer's parameters")

    def _update(self, p: torch.Tensor, group: dict) -> None:
        # torch.optim.adam._single_tensor_adam (the non-capturable branch), same operations
        for opt in ("amsgrad", "maximize", "capturable", "differentiable"):
            if group.get(opt):
                raise ValueError(f"pyinterp.sae.optim.Adam does not support {opt}=True")
        if group.get("weight_decay") or group.get("fused"):
            raise ValueError("pyinterp.sae.optim.Adam supports neither weight_decay nor fused")
        grad = p.grad
        if grad.is_sparse or p.is_complex():
            raise ValueError("pyinterp.sae.optim.Adam needs real dense gradients")
        state = self.state[p]
        if len(state) == 0:
            scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
            state["step"] = torch.tensor(0.0, dtype=scalar)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        exp_avg, exp_avg_sq, step_t = state["exp_avg"], state["exp_avg_sq"], state["step"]
        beta1, beta2 = group["betas"]
        lr, eps = group["lr"], group["eps"]
        lr = float(lr) if isinstance(lr, torch.Tensor) else lr
        step_t += 1
        # whole-tensor, in place (no temporaries), exactly as torch
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = step_t.item()
        step_size = lr / (1 - beta1 ** step)
        bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
        # the elementwise rest chunk by chunk: the same bits, temporaries of one chunk
        if not (p.is_contiguous() and exp_avg.is_contiguous() and exp_avg_sq.is_contiguous()):
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
            p.addcdiv_(exp_avg, denom, value=-step_size)
            return
        flat_p, flat_m, flat_v = p.view(-1), exp_avg.view(-1), exp_avg_sq.view(-1)
        for lo in range(0, flat_p.numel(), self.chunk):
            hi = lo + self.chunk
            denom = (flat_v[lo:hi].sqrt() / bias_correction2_sqrt).add_(eps)
            flat_p[lo:hi].addcdiv_(flat_m[lo:hi], denom, value=-step_size)
            del denom  # before the next chunk's


@contextlib.contextmanager
def in_backward(opt: Adam, params: Iterable[torch.Tensor],
                before_update: Optional[Callable[[torch.Tensor], None]] = None):
    """While active, every backward that reaches one of ``params`` updates it with
    ``opt.step_param`` as soon as its gradient is complete (after ``before_update(p)``, e.g.
    a gradient projection) and then frees the gradient (``p.grad = None``).

    A parameter that gets no gradient is not updated (as ``opt.step()`` skips it). If
    backward fails midway, the parameters already reached have been updated."""
    def hook(p: torch.Tensor) -> None:
        if before_update is not None:
            before_update(p)
        opt.step_param(p)
        p.grad = None

    handles = [p.register_post_accumulate_grad_hook(hook) for p in params if p.requires_grad]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
