"""pyinterp.sae.optim: the trainer's Adam is torch.optim.Adam(foreach=False) bit for bit
(parameters and state, every dtype, any chunking, state dicts interchangeable), and the
optimizer in backward gives the same bits as a step after backward while freeing each
gradient as soon as its parameter is updated."""
import copy

import pytest
import torch

from pyinterp.sae.optim import Adam, in_backward
from sae_testing import one_thread  # noqa: F401  (autouse: one torch thread)


def _params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(), (0,), (5,), (7, 13), (3, 40, 33)]
    return [torch.randn(s, generator=g).to(dtype) for s in shapes]


def _grads(params, step):
    g = torch.Generator().manual_seed(100 + step)
    # magnitudes over several decades, so that eps and the bias corrections matter
    return [torch.randn(p.shape, generator=g).to(p.dtype) * 10.0 ** (step % 4 - 3) for p in params]


def _assert_same_state(a: torch.optim.Optimizer, b: torch.optim.Optimizer):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for pid in sa["state"]:
        assert sa["state"][pid].keys() == sb["state"][pid].keys()
        for k, v in sa["state"][pid].items():
            assert v.dtype == sb["state"][pid][k].dtype, (pid, k)
            assert torch.equal(v, sb["state"][pid][k]), (pid, k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 17])
def test_adam_equals_torch_single_tensor_adam_bit_for_bit(dtype, chunk):
    ref = [torch.nn.Parameter(p) for p in _params(dtype)]
    ours = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    kw = dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6)
    # two groups (the second with its own lr), lr changed between steps as the trainer does
    t_opt = torch.optim.Adam([{"params": ref[:3]}, {"params": ref[3:], "lr": 1e-2}],
                             foreach=False, **kw)
    o_opt = Adam([{"params": ours[:3]}, {"params": ours[3:], "lr": 1e-2}], chunk=chunk, **kw)
    for step in range(5):
        for p, q, g in zip(ref, ours, _grads(ref, step)):
            if step == 1 and p.dim() == 1:
                continue  # a parameter without a gradient this step is skipped by both
            p.grad, q.grad = g.clone(), g.clone()
        for opt in (t_opt, o_opt):
            opt.param_groups[0]["lr"] = 3e-3 * (step + 1) / 5
            opt.step()
            opt.zero_grad(set_to_none=True)
        for p, q in zip(ref, ours):
            assert torch.equal(p, q), (step, tuple(p.shape))
    _assert_same_state(t_opt, o_opt)


def test_state_dicts_are_interchangeable_with_torch_adam():
    ref = [torch.nn.Parameter(p) for p in _params(torch.float32)]
    ours = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    t_opt = torch.optim.Adam(ref, lr=1e-3, foreach=False)
    for p, g in zip(ref, _grads(ref, 0)):
        p.grad = g
    t_opt.step()
    o_opt = Adam(ours, lr=1e-3)
    for q, p in zip(ours, ref):
        q.data.copy_(p)
    # a checkpoint written with torch's Adam (deep-copied: load_state_dict keeps the tensors)
    o_opt.load_state_dict(copy.deepcopy(t_opt.state_dict()))
    for step in (1, 2):
        for p, q, g in zip(ref, ours, _grads(ref, step)):
            p.grad, q.grad = g.clone(), g.clone()
        t_opt.step()
        o_opt.step()
    for p, q in zip(ref, ours):
        assert torch.equal(p, q)
    _assert_same_state(t_opt, o_opt)
    back = torch.optim.Adam(ref, lr=1e-3, foreach=False)
    back.load_state_dict(copy.deepcopy(o_opt.state_dict()))
    _assert_same_state(t_opt, back)


def test_adam_refuses_what_it_does_not_implement():
    p = torch.nn.Parameter(torch.ones(3))
    opt = Adam([p])
    p.grad = torch.ones(3)
    opt.param_groups[0]["amsgrad"] = True
    with pytest.raises(ValueError, match="amsgrad"):
        opt.step()
    opt.param_groups[0]["amsgrad"] = False
    opt.param_groups[0]["weight_decay"] = 0.1
    with pytest.raises(ValueError, match="weight_decay"):
        opt.step()
    with pytest.raises(ValueError, match="not one of this optimizer's parameters"):
        opt.step_param(torch.nn.Parameter(torch.ones(3)))
    with pytest.raises(ValueError, match="chunk"):
        Adam([p], chunk=0)


class _Net(torch.nn.Module):
    """A parameter used twice (tied), one used by two branches, one unused this step."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = torch.nn.Parameter(torch.randn(6, 5, generator=g))
        self.b = torch.nn.Parameter(torch.randn(5, 4, generator=g))
        self.c = torch.nn.Parameter(torch.randn(4, generator=g))
        self.unused = torch.nn.Parameter(torch.randn(3, generator=g))

    def forward(self, x):
        h = torch.tanh(x @ self.a) @ self.b + self.c
        return h.pow(2).sum() + (self.a @ self.b).sum() * 0.1 + self.b.norm()


def test_in_backward_equals_the_step_after_backward_and_frees_each_gradient():
    x = torch.randn(9, 6, generator=torch.Generator().manual_seed(1))
    ref, net = _Net(), _Net()
    r_opt, o_opt = Adam(ref.parameters(), lr=1e-2), Adam(net.parameters(), lr=1e-2)
    params = list(net.parameters())
    alive = []

    def before(p):
        # when a parameter is updated, no other parameter's gradient is still held
        alive.append(sum(q.grad is not None for q in params if q is not p))

    for _ in range(4):
        r_opt.zero_grad(set_to_none=True)
        ref(x).backward()
        r_opt.step()
        with in_backward(o_opt, params, before_update=before):
            net(x).backward()
        assert all(p.grad is None for p in params)
    for (name, p), q in zip(ref.named_parameters(), net.parameters()):
        assert torch.equal(p, q), name
    _assert_same_state(r_opt, o_opt)
    assert alive and max(alive) == 0 and len(alive) == 4 * 3      # "unused" never updated
    assert "unused" not in {n for n, p in net.named_parameters() if o_opt.state.get(p)}
    # outside the context a backward only accumulates gradients
    before_exit = [p.detach().clone() for p in params]
    net(x).backward()
    assert all(torch.equal(p, q) for p, q in zip(params, before_exit))
    assert net.a.grad is not None


def test_in_backward_cannot_silently_use_an_updated_parameter():
    """A backward node that still needs a parameter already updated raises (autograd's
    version counter), rather than computing with the new values."""
    w = torch.nn.Parameter(torch.randn(4, 4))
    u = torch.nn.Parameter(torch.randn(3, 4))
    opt = Adam([w, u], lr=1e-2)
    x = torch.randn(3, 4)
    # u's gradient node saves w's value (through w.detach(), outside w's gradient path) and
    # runs after w's update (autograd runs the later-recorded branch first)
    loss = (u @ w.detach()).sum() + (x @ w).sum()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        with in_backward(opt, [w, u]):
            loss.backward()
