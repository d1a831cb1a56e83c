"""persona_project: every backend x dtype x reduce x awkward shapes against the reference,
forward and backward; gradcheck; in-place reads of strided views; bad inputs. (GPU compile
checks: tests/test_gpu_resources.py, tests/test_cuda_launch_contract.py.)
"""

import pytest
import torch

from kernel_testing import BACKEND_PARAMS, assert_close, require
from pyinterp import ops
from pyinterp.bench.timing import peak_memory

ALL_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
REDUCES = ("mean", "sum", "last", "none")
# (L, B, T, D, P): T=1 and P=1; odd sizes; P > 8 and D > 128 (several D blocks / direction
# groups on the GPU backends); L*B small with long T (the CPU/GPU token-split paths).
SHAPES = [(1, 1, 1, 1, 1), (3, 2, 13, 19, 5), (2, 2, 9, 130, 9), (1, 2, 50, 8, 2)]


def _views(L, B, T, D, dtype, device, requires_grad=False):
    """L non-contiguous (B, T, D) views of one (B, T, L, D + 3) buffer (a residual stream
    slice layout) and the buffer itself (the leaf that collects their gradients)."""
    base = torch.randn(B, T, L, D + 3).to(dtype).to(device).requires_grad_(requires_grad)
    return [base[:, :, l, 1:D + 1] for l in range(L)], base


def _mask(kind, B, T, device):
    if kind is None:
        return None
    m = torch.rand(B, T, device=device) > 0.4
    m[0, -1] = False  # "last" must not just take the last position
    m[0, 0] = True
    if B > 1:
        m[-1] = False  # a row that selects nothing
    if kind == "float":
        return m.float() * torch.rand(B, T, device=device)
    if kind == "int":
        return m.long()
    return m


def _ref(layers, vectors, mask, reduce, normalize=True):
    to = lambda t: None if t is None else t.detach().cpu()  # noqa: E731
    return ops.persona_project([to(h) for h in layers], to(vectors), to(mask), reduce, normalize,
                               backend="reference")


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("reduce", REDUCES)
def test_forward_matches_reference(backend, dtype, reduce):
    device = require(backend)
    # The Triton interpreter is ~1000x slower than torch: there, each shape gets one mask kind
    # (rotating), all of them still covered across shapes.
    interpreted = backend == "triton" and device.type == "cpu"
    for i, (L, B, T, D, P) in enumerate(SHAPES):
        layers, _ = _views(L, B, T, D, dtype, device)
        vectors = torch.randn(L, P, D, device=device) if i % 2 == 0 else torch.randn(P, D, device=device)
        kinds = (None, "bool", "float", "int")
        for mask_kind in (kinds[i % 4],) if interpreted else kinds:
            if mask_kind == "float" and reduce == "last":
                continue
            mask = _mask(mask_kind, B, T, device)
            got = ops.persona_project(layers, vectors, mask, reduce, backend=backend)
            want = _ref(layers, vectors, mask, reduce)
            assert got.shape == ((L, B, T, P) if reduce == "none" else (L, B, P))
            assert got.dtype == dtype
            assert_close(got, want, dtype)
        # the stacked (L, B, T, D) form, unnormalised
        stacked = torch.stack(layers).transpose(2, 3).contiguous().transpose(2, 3)  # strided too
        got = ops.persona_project(stacked, vectors, None, reduce, normalize=False, backend=backend)
        assert_close(got, _ref(list(stacked), vectors, None, reduce, normalize=False), dtype,
                     rtol=TOL_UNNORM[dtype])


TOL_UNNORM = {torch.float64: 1e-8, torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float64), ids=str)
@pytest.mark.parametrize("reduce", REDUCES)
def test_backward_matches_reference(backend, dtype, reduce):
    device = require(backend)
    L, B, T, D, P = 3, 2, 11, 21, 4
    for shared in (False, True):
        layers, base = _views(L, B, T, D, dtype, device, requires_grad=True)
        v0 = torch.randn(P, D) if shared else torch.randn(L, P, D)
        vectors = v0.to(device).requires_grad_(True)
        mask = _mask("bool", B, T, device)
        mask[-1, 3] = True  # every row selects something: gradients stay finite
        out = ops.persona_project(layers, vectors, mask, reduce, backend=backend)
        g = torch.randn(out.shape, device=device).to(out.dtype)
        gh, gv = torch.autograd.grad(out, (base, vectors), g)

        base_r = base.detach().cpu().requires_grad_(True)
        vec_r = vectors.detach().cpu().requires_grad_(True)
        out_r = ops.persona_project([base_r[:, :, l, 1:D + 1] for l in range(L)], vec_r, mask.cpu(),
                                    reduce, backend="reference")
        gh_r, gv_r = torch.autograd.grad(out_r, (base_r, vec_r), g.cpu())
        assert_close(out, out_r, dtype)
        assert_close(gh, gh_r, dtype, grad=True)
        assert_close(gv, gv_r, vectors.dtype, grad=True)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("reduce", REDUCES)
def test_gradcheck_float64(backend, reduce):
    require(backend)
    L, B, T, D, P = 2, 2, 3, 4, 2
    base = torch.randn(B, T, L, D + 1, dtype=torch.float64, requires_grad=True)
    vectors = torch.randn(L, P, D, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 0, 1], [0, 1, 0]], dtype=torch.bool)

    def f(base, vectors):
        return ops.persona_project([base[:, :, l, :D] for l in range(L)], vectors, mask, reduce,
                                   backend=backend)

    assert torch.autograd.gradcheck(f, (base, vectors))


def test_reference_semantics_by_hand():
    """Each reduction on numbers small enough to check by hand."""
    h = torch.tensor([[[[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]]]])  # (1, 1, 3, 2)
    v = torch.tensor([[0.0, 2.0]])  # (P=1, D=2): unit direction (0, 1)
    m = torch.tensor([[True, True, False]])
    for backend in ("reference", "cpu"):
        require(backend)
        p = lambda *a, **k: ops.persona_project(h, v, *a, backend=backend, **k).flatten().tolist()  # noqa: E731
        assert p(m, "mean") == [1.0]  # (0 + 2) / 2
        assert p(m, "sum") == [2.0]
        assert p(m, "last") == [2.0]  # last selected token, not the last token
        assert p(None, "last") == [4.0]
        assert p(None, "mean", normalize=False) == [4.0]  # (0 + 4 + 8) / 3
        assert p(m, "none") == [0.0, 2.0, 0.0]  # unselected tokens give 0
        assert p(torch.tensor([[1.0, 3.0, 0.0]]), "mean") == [1.5]  # float mask = token weights
        empty = torch.zeros(1, 3, dtype=torch.bool)
        assert torch.isnan(ops.persona_project(h, v, empty, "mean", backend=backend)).all()
        assert torch.isnan(ops.persona_project(h, v, empty, "last", backend=backend)).all()
        assert ops.persona_project(h, v, empty, "sum", backend=backend).item() == 0.0


def test_cpu_reads_strided_views_in_place():
    """A (L, B, T, D) tensor expanded from one row has no storage of its own: any copy of it
    would allocate L*B*T*D*4 bytes (128 MiB here). The kernel reads it through its strides."""
    require("cpu")
    L, B, T, D = 4, 4, 4096, 512
    row = torch.randn(1, 1, 1, D)
    hidden = row.expand(L, B, T, D)
    v = torch.randn(L, 3, D)
    out = {}
    extra = peak_memory(lambda: out.setdefault("y", ops.persona_project(hidden, v, backend="cpu")))
    want = ops.persona_project(hidden[:, :, :1], v, backend="reference")
    assert_close(out["y"], want, torch.float32, rtol=2e-3)  # a float32 sum of 4096 tokens
    assert extra < 32 * 2**20, f"persona_project allocated {extra / 2**20:.1f} MiB: a copy?"


@pytest.mark.parametrize("backend", BACKEND_PARAMS)
def test_kernel_token_split_paths(backend):
    """Pools that split the tokens across programs (few layer x row pairs) and sum partial rows."""
    device = require(backend)
    from pyinterp.ops._dispatch import implementation

    impl = implementation("persona", backend)
    layers, _ = _views(1, 1, 37, 10, torch.float32, device)
    w = torch.rand(1, 37, device=device) * (torch.rand(1, 37, device=device) > 0.3)
    want = torch.einsum("bt,btd->bd", w.cpu(), layers[0].cpu())[None]
    assert_close(impl.persona_pool(layers, w.contiguous(), None), want, torch.float32)
    if backend == "triton":
        for splits in (2, 3, 5):
            assert_close(impl.persona_pool(layers, w.contiguous(), None, splits=splits), want,
                         torch.float32)


# ------------------------------------------------------------------------------------------
# bad input names the argument


def _ok():
    return [torch.randn(2, 3, 4) for _ in range(2)], torch.randn(2, 5, 4)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_bad_inputs_name_the_argument(backend):
    require(backend)
    layers, v = _ok()
    call = lambda *a, **k: ops.persona_project(*a, backend=backend, **k)  # noqa: E731
    with pytest.raises(TypeError, match="hidden must be"):
        call("nope", v)
    with pytest.raises(ValueError, match="hidden must be 4-D"):
        call(torch.randn(2, 3, 4), v)
    with pytest.raises(ValueError, match="hidden must be a non-empty list"):
        call([], v)
    with pytest.raises(ValueError, match=r"hidden\[1\] must have shape"):
        call([layers[0], torch.randn(2, 3, 5)], v)
    with pytest.raises(TypeError, match=r"hidden\[1\] must have the dtype"):
        call([layers[0], layers[1].double()], v)
    with pytest.raises(TypeError, match="hidden must have dtype"):
        call(torch.zeros(2, 2, 3, 4, dtype=torch.int64), v)
    with pytest.raises(ValueError, match="hidden must have non-empty"):
        call([torch.randn(2, 0, 4)] * 2, v)
    with pytest.raises(ValueError, match="vectors must have last dim D=4"):
        call(layers, torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="vectors must have L=2 layers"):
        call(layers, torch.randn(3, 5, 4))
    with pytest.raises(ValueError, match=r"vectors must be \(L, P, D\) or \(P, D\)"):
        call(layers, torch.randn(4))
    with pytest.raises(TypeError, match="vectors must be a torch.Tensor"):
        call(layers, [[1.0] * 4])
    with pytest.raises(ValueError, match="mask must have shape"):
        call(layers, v, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must have dtype"):
        call(layers, v, torch.ones(2, 3, dtype=torch.complex64))
    with pytest.raises(ValueError, match="reduce must be one of"):
        call(layers, v, None, "max")
    with pytest.raises(TypeError, match="normalize must be a bool"):
        call(layers, v, None, "mean", 1)



@pytest.mark.parametrize("backend", BACKEND_PARAMS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("reduce", ("mean", "sum", "last"))
def test_pool_matches_reference_fwd_bwd(backend, dtype, reduce):
    """persona_pool (the reduction without the projection) on strided views, fwd and bwd."""
    device = require(backend)
    L, B, T, D = 3, 2, 11, 21
    layers, base = _views(L, B, T, D, dtype, device, requires_grad=True)
    mask = _mask("bool" if reduce == "last" else "float", B, T, device)
    mask[-1, 2] = 1  # every row selects something
    out = ops.persona_pool(layers, mask, reduce, backend=backend)
    g = torch.randn(out.shape, device=device).to(out.dtype)
    (gh,) = torch.autograd.grad(out, (base,), g)
    base_r = base.detach().cpu().requires_grad_(True)
    out_r = ops.persona_pool([base_r[:, :, l, 1:D + 1] for l in range(L)], mask.cpu(), reduce,
                             backend="reference")
    (gh_r,) = torch.autograd.grad(out_r, (base_r,), g.cpu())
    assert out.shape == (L, B, D) and out.dtype == dtype
    assert_close(out, out_r, dtype)
    assert_close(gh, gh_r, dtype, grad=True)
