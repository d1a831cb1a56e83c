"""asv: sparse SAE ops on CPU (2 threads, float32, N=4096, d_in=512, d_sae=16384, k=32):
topk_encode (pyinterp cpu vs torch sub+matmul+add+topk+relu vs the bare GEMM floor) and
sparse_decode forward / forward+backward (pyinterp cpu vs a dense decode in torch)."""
import torch

N, D_IN, D_SAE, K = 4096, 512, 16384, 32


def _inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D_IN, generator=g)
    W_enc = torch.randn(D_IN, D_SAE, generator=g) / D_IN ** 0.5
    b_enc = torch.randn(D_SAE, generator=g) * 0.1
    b_dec = torch.randn(D_IN, generator=g) * 0.1
    W_dec = torch.randn(D_SAE, D_IN, generator=g) / D_IN ** 0.5
    return x, W_enc, b_enc, b_dec, W_dec


class TopKEncode:
    params = (["pyinterp_cpu", "torch", "gemm_floor"],)
    param_names = ["impl"]
    timeout = 600
    number = 1
    repeat = 5

    def setup(self, impl):
        torch.set_num_threads(2)
        self.x, self.W_enc, self.b_enc, self.b_dec, _ = _inputs()

    def time_encode(self, impl):
        x, W, be, bd = self.x, self.W_enc, self.b_enc, self.b_dec
        if impl == "pyinterp_cpu":
            from pyinterp import ops

            ops.topk_encode(x, W, be, bd, K, backend="cpu")
        elif impl == "torch":
            v, i = torch.topk(torch.matmul(x - bd, W) + be, K, dim=-1)
            torch.relu(v)
        else:
            x @ W


class SparseDecode:
    params = (["pyinterp_cpu", "torch_dense"],)
    param_names = ["impl"]
    timeout = 600
    number = 1
    repeat = 5

    def setup(self, impl):
        torch.set_num_threads(2)
        from pyinterp import ops

        x, W_enc, b_enc, b_dec, self.W_dec = _inputs()
        self.values, self.indices = ops.topk_encode(x, W_enc, b_enc, b_dec, K, backend="cpu")
        self.b_dec = b_dec
        self.grad = torch.randn(N, D_IN, generator=torch.Generator().manual_seed(1))

    def _decode(self, impl, values, W_dec, b_dec):
        if impl == "pyinterp_cpu":
            from pyinterp import ops

            return ops.sparse_decode(values, self.indices, W_dec, b_dec, check_indices=False,
                                     backend="cpu")
        code = torch.zeros(N, D_SAE).scatter(1, self.indices, values)
        return code @ W_dec + b_dec

    def time_forward(self, impl):
        self._decode(impl, self.values, self.W_dec, self.b_dec)

    def time_forward_backward(self, impl):
        v = self.values.detach().requires_grad_()
        W = self.W_dec.detach().requires_grad_()
        b = self.b_dec.detach().requires_grad_()
        torch.autograd.grad(self._decode(impl, v, W, b), [v, W, b], self.grad)
