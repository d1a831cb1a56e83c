"""asv: SoLU, pyinterp's solu / fused solu_ln (CPU backend) vs torch eager
(``x * x.softmax(-1)`` then ``F.layer_norm``) vs one plain copy of x (the memory roofline).
CPU, 2 threads, float32, x: (8192, 2048); forward, and forward+backward."""
import torch
import torch.nn.functional as F

SHAPE = (8192, 2048)


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=g)
    w = 1 + 0.1 * torch.randn(SHAPE[-1], generator=g)
    b = 0.1 * torch.randn(SHAPE[-1], generator=g)
    return x, w, b


def _fn(op, impl, x, w, b):
    from pyinterp import ops

    if impl == "copy":
        y = torch.empty_like(x)
        return lambda: y.copy_(x)
    if impl == "torch_eager":
        if op == "solu":
            return lambda: x * x.softmax(-1)
        return lambda: F.layer_norm(x * x.softmax(-1), (x.shape[-1],), w, b)
    if op == "solu":
        return lambda: ops.solu(x, backend="cpu")
    return lambda: ops.solu_ln(x, w, b, backend="cpu")


class SoLUForward:
    params = (["solu", "solu_ln"], ["pyinterp_cpu", "torch_eager", "copy"])
    param_names = ["op", "impl"]
    number = 1
    repeat = 11
    timeout = 300

    def setup(self, op, impl):
        torch.set_num_threads(2)
        x, w, b = _inputs()
        self.fn = _fn(op, impl, x, w, b)
        with torch.no_grad():
            self.fn()

    def time_forward(self, op, impl):
        with torch.no_grad():
            self.fn()

    def peakmem_forward(self, op, impl):
        with torch.no_grad():
            self.fn()


class SoLUForwardBackward:
    params = (["solu", "solu_ln"], ["pyinterp_cpu", "torch_eager"])
    param_names = ["op", "impl"]
    number = 1
    repeat = 7
    timeout = 300

    def setup(self, op, impl):
        torch.set_num_threads(2)
        x, w, b = (t.requires_grad_(True) for t in _inputs())
        self.params_ = (x, w, b)
        self.gy = torch.randn(SHAPE)
        self.fn = _fn(op, impl, x, w, b)
        self.time_forward_backward(op, impl)

    def time_forward_backward(self, op, impl):
        for t in self.params_:
            t.grad = None
        self.fn().backward(self.gy)
