"""logits_hvp (each row's cross-entropy Hessian in logit space applied to vectors) against
float64 double-backward autograd: ``c_i · logsumexp(l_i)`` has the logit Hessian
``c_i (diag p_i − p_i p_iᵀ)`` with ``p_i = softmax(l_i)``, so differentiating its gradient
along each vector gives the products independently of our formula."""
import pytest
import torch

import hessalign_ext
from conftest import python_below_op

F64 = torch.float64
SHAPES = {"N37_C7_B1": (37, 7, 1), "N37_C65_B3": (37, 65, 3), "N5_C1_B2": (5, 1, 2), "N1_C2_B4": (1, 2, 4),
          "N0_C3_B2": (0, 3, 2), "N6_C4_B0": (6, 4, 0)}


def problem(N, C, B, dtype=F64, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, C, generator=g, dtype=F64) * 2
    coef = torch.rand(N, generator=g, dtype=F64) + 0.1
    vectors = torch.randn(N, B * C, generator=g, dtype=F64)
    return [t.to(dtype).requires_grad_(requires_grad) for t in (logits, coef, vectors)]


def reference(logits, coef, vectors):
    N, C = logits.shape
    L = logits.detach().double().requires_grad_(True)
    c, U = coef.detach().double(), vectors.detach().double().view(N, vectors.shape[1] // C, C)
    (grad,) = torch.autograd.grad((c * torch.logsumexp(L, 1)).sum(), L, create_graph=True)
    s = torch.zeros_like(U)
    for b in range(U.shape[1]):
        (s[:, b],) = torch.autograd.grad((grad * U[:, b]).sum(), L, retain_graph=True)
    m = (torch.softmax(L, 1)[:, None, :] * U).sum(2)
    return s.reshape(N, vectors.shape[1]), m.detach()


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_logits_hvp_matches_double_backward(shape, dtype):
    logits, coef, vectors = problem(*shape, dtype=dtype)
    s, m = hessalign_ext.ops.logits_hvp(torch.softmax(logits, 1), coef, vectors)
    s_ref, m_ref = reference(logits, coef, vectors)
    assert s.dtype == m.dtype == dtype and s.shape == vectors.shape and m.shape == (shape[0], shape[2])
    tol = dict(rtol=1e-12, atol=1e-13) if dtype == F64 else dict(rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(s.double(), s_ref, **tol)
    torch.testing.assert_close(m.double(), m_ref, **tol)


def test_confident_rows_keep_precision():
    """Rows with p̄ = 1 − p_k ≈ 4e-6 in float32 (every fourth row spread over the classes): H_i u
    (forward) and H_i ds (the backward's du) keep float32's precision row by row, against the
    same float32 values in float64. Their dominant entry c p_k (u_k − p·u) is of size p̄·|u|,
    where forming p·u first would leave an error of eps·|u| (kernel: p̄ u_k − Σ' p u, with p̄ =
    1 − p_k exact from the given p_k)."""
    g = torch.Generator().manual_seed(5)
    N, C, B = 24, 7, 2
    logits = torch.rand(N, C, generator=g) + 14.0 * torch.nn.functional.one_hot(torch.randint(0, C, (N,),
                                                                                              generator=g), C)
    logits[::4] = torch.randn(N, C, generator=g)[::4]
    probs, coef = torch.softmax(logits, 1), torch.rand(N, generator=g) + 0.1
    vectors, grad_s = torch.randn(N, B * C, generator=g), torch.randn(N, B * C, generator=g)
    s, m = hessalign_ext.ops.logits_hvp(probs, coef, vectors)
    du = torch.ops.hessalign_ext._logits_hvp_backward(grad_s, None, probs, coef, vectors, m)[2]

    def hessian_times(x):  # c p ⊙ (x − p·x) in float64
        p, x3 = probs.double()[:, None], x.double().view(N, B, C)
        return (coef.double()[:, None, None] * p * (x3 - (p * x3).sum(2, keepdim=True))).view(N, B * C)

    assert (1 - probs.max(1).values[1::4]).max() < 1e-5  # the confident rows are confident
    for got, ref, name in ((s, hessian_times(vectors), "s"), (du, hessian_times(grad_s), "du")):
        error = ((got.double() - ref).abs().amax(1) / ref.abs().amax(1)).max().item()
        assert error < 2e-6, f"{name}: largest error relative to its row {error:.3g}"
    torch.testing.assert_close(m.double(), (probs.double()[:, None] * vectors.double().view(N, B, C)).sum(2),
                               rtol=2e-6, atol=0)


def test_non_contiguous_inputs():
    """Strided views are copied once, not misread."""
    logits, coef, vectors = problem(9, 5, 2)
    probs = torch.softmax(logits, 1)
    s, m = hessalign_ext.ops.logits_hvp(probs.t().contiguous().t(), coef[None].expand(2, -1)[1],
                                        vectors.t().contiguous().t())
    s_ref, m_ref = reference(logits, coef, vectors)
    torch.testing.assert_close(s, s_ref, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(m, m_ref, rtol=1e-12, atol=1e-13)


def test_gradcheck():
    logits, coef, vectors = problem(6, 4, 2, requires_grad=True)
    probs = torch.softmax(logits.detach(), 1).requires_grad_(True)
    fn = hessalign_ext.ops.logits_hvp
    assert torch.autograd.gradcheck(fn, (probs, coef, vectors))
    # one output used: the other's gradient is absent (None in the backward op)
    assert torch.autograd.gradcheck(lambda *a: fn(*a)[0], (probs, coef, vectors))
    assert torch.autograd.gradcheck(lambda *a: fn(*a)[1], (probs, coef, vectors))
    # only some inputs differentiable
    assert torch.autograd.gradcheck(lambda u: fn(probs.detach(), coef.detach(), u)[0], (vectors,))


def test_double_backward_raises():
    logits, coef, vectors = problem(4, 3, 1, requires_grad=True)
    s, _ = hessalign_ext.ops.logits_hvp(torch.softmax(logits, 1), coef, vectors)
    (g,) = torch.autograd.grad(s.square().sum(), vectors, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(g.sum(), vectors)


def test_autograd_is_cpp():
    """No Python below the op's call, grad or not (csrc/autograd.cpp); both outputs get the node."""
    for requires_grad in (False, True):
        logits, coef, vectors = problem(7, 3, 2, requires_grad=requires_grad)
        (s, m), python = python_below_op(torch.ops.hessalign_ext.logits_hvp.default, torch.softmax(logits, 1), coef,
                                         vectors)
        assert python == []
        assert (s.grad_fn is not None) == requires_grad and (m.grad_fn is s.grad_fn)


def test_gradient_through_the_softmax_matches_autograd():
    """The chain to the logits: our backward against autograd of the same expression in torch ops."""
    logits, coef, vectors = problem(11, 6, 2, requires_grad=True)
    w = torch.randn(11, 12, dtype=F64, generator=torch.Generator().manual_seed(4))
    s, m = hessalign_ext.ops.logits_hvp(torch.softmax(logits, 1), coef, vectors)
    ours = torch.autograd.grad((s * w).sum() + m.square().sum(), (logits, coef, vectors))
    p = torch.softmax(logits, 1)
    u3 = vectors.view(11, 2, 6)
    m_ref = (p[:, None] * u3).sum(2)
    s_ref = (coef[:, None, None] * p[:, None] * (u3 - m_ref[..., None])).reshape(11, 12)
    expected = torch.autograd.grad((s_ref * w).sum() + m_ref.square().sum(), (logits, coef, vectors))
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


def test_opcheck():
    logits, coef, vectors = problem(7, 3, 2, requires_grad=True)
    probs = torch.softmax(logits.detach(), 1).requires_grad_(True)
    torch.library.opcheck(torch.ops.hessalign_ext.logits_hvp.default, (probs, coef, vectors))
    s, m = hessalign_ext.ops.logits_hvp(probs, coef, vectors)
    backward = torch.ops.hessalign_ext._logits_hvp_backward.default
    for grads in ((torch.randn_like(s), torch.randn_like(m)), (torch.randn_like(s), None), (None, torch.randn_like(m))):
        torch.library.opcheck(backward, (*grads, probs.detach(), coef.detach(), vectors.detach(), m.detach()))


@pytest.mark.parametrize("name, bad, message", [
    ("grad_s", torch.rand(4, 5, dtype=F64), "grad_s must have shape"),
    ("grad_m", torch.rand(4, 2, dtype=torch.float32), "grad_m must have dtype"),
    ("means", torch.rand(3, 2, dtype=F64), "means must have shape"),
])
def test_backward_bad_arguments(name, bad, message):
    args = dict(grad_s=torch.rand(4, 6, dtype=F64), grad_m=torch.rand(4, 2, dtype=F64),
                probs=torch.rand(4, 3, dtype=F64),
                coef=torch.rand(4, dtype=F64), vectors=torch.rand(4, 6, dtype=F64), means=torch.rand(4, 2, dtype=F64))
    args[name] = bad
    with pytest.raises(ValueError, match=f"logits_hvp_backward: {message}"):
        torch.ops.hessalign_ext._logits_hvp_backward(*args.values())


@pytest.mark.parametrize("kwargs, message", [
    (dict(probs=torch.rand(4, dtype=F64)), "probs"),
    (dict(probs=torch.rand(4, 0, dtype=F64)), "probs"),
    (dict(probs=torch.ones(4, 3, dtype=torch.int64)), "probs"),
    (dict(probs=torch.rand(4, 3, dtype=torch.bfloat16)), "probs"),
    (dict(coef=torch.rand(5, dtype=F64)), "coef"),
    (dict(coef=torch.rand(4, dtype=torch.float32)), "coef"),
    (dict(vectors=torch.rand(4, 7, dtype=F64)), "vectors"),
    (dict(vectors=torch.rand(3, 6, dtype=F64)), "vectors"),
    (dict(vectors=torch.rand(4, 6, dtype=torch.float32)), "vectors"),
], ids=["probs_1d", "no_classes", "probs_int", "bf16_on_cpu", "coef_length", "coef_dtype", "vectors_width",
        "vectors_rows", "vectors_dtype"])
def test_bad_arguments(kwargs, message):
    args = dict(probs=torch.rand(4, 3, dtype=F64), coef=torch.rand(4, dtype=F64), vectors=torch.rand(4, 6, dtype=F64))
    args.update(kwargs)
    with pytest.raises(ValueError, match=f"logits_hvp: {message}"):
        hessalign_ext.ops.logits_hvp(args["probs"], args["coef"], args["vectors"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
@pytest.mark.parametrize("dtype", [F64, torch.float32, torch.bfloat16], ids=str)
def test_logits_hvp_cuda_matches_reference(dtype):
    logits, coef, vectors = problem(300, 65, 3)
    probs = torch.softmax(logits, 1)
    s, m = hessalign_ext.ops.logits_hvp(*(t.to("cuda", dtype) for t in (probs, coef, vectors)))
    s_ref, m_ref = hessalign_ext.ops.logits_hvp(*(t.to(dtype).double() for t in (probs, coef, vectors)))
    assert s.is_cuda and s.dtype == dtype
    tol = {F64: dict(rtol=1e-12, atol=1e-13), torch.float32: dict(rtol=2e-5, atol=2e-6),
           torch.bfloat16: dict(rtol=2e-2, atol=2e-3)}[dtype]
    torch.testing.assert_close(s.double().cpu(), s_ref, **tol)
    torch.testing.assert_close(m.double().cpu(), m_ref, **tol)
