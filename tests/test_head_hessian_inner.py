"""head_hessian_inner: ⟨H_a, H_b⟩_F of every pair of domains, vs explicitly formed Hessians."""

import pytest
import torch

import hessalign_ext
from hessalign_ext import reference
from conftest import (
    DEVICES, DTYPES, LOSS_CASE_IDS, LOSS_CASES, LOSS_SHAPE, SHAPE, SHAPES, SMALL_SHAPE_IDS, SMALL_SHAPES,
    assert_close, assert_double_backward_raises, check_backward, make_problem,
)

# The reference forms each domain's (C·D)² Hessian by C·D double-backward passes: these
# shapes keep C·D small; the large ones are checked against Kronecker-built Hessians.
REF_SHAPES = [s for s in SHAPES if s.C * s.D <= 200]
LARGE_SHAPES = [SHAPE["c1000"], SHAPE["off_tile"]]


def call(impl, p, **opts):
    return impl.head_hessian_inner(*p.head(), p.offsets, **opts)


def kron_hessians(p):
    """H_e = (1/n_e) Σ_i kron(diag(p_i) - p_i p_iᵀ, z̃_i z̃_iᵀ): the block structure, no autograd."""
    z = p.features.double()
    if p.bias is not None:
        z = torch.cat([z, torch.ones(z.shape[0], 1, dtype=z.dtype)], 1)
        w = torch.cat([p.weight.double(), p.bias.double()[:, None]], 1)
    else:
        w = p.weight.double()
    prob = torch.softmax(z @ w.T, 1)
    out = []
    for lo, hi in zip(p.offsets[:-1].tolist(), p.offsets[1:].tolist()):
        H = torch.zeros(w.numel(), w.numel(), dtype=torch.float64)
        for i in range(lo, hi):
            A = torch.diag(prob[i]) - torch.outer(prob[i], prob[i])
            H += torch.kron(A, torch.outer(z[i], z[i])) / (hi - lo)
        out.append(H)
    return torch.stack(out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", REF_SHAPES, ids=[s.id for s in REF_SHAPES])
def test_forward(shape, dtype, device):
    p = make_problem(shape, dtype, device)
    out = call(hessalign_ext, p)
    assert out.shape == (shape.E, shape.E) and out.dtype == dtype and out.device == p.features.device
    assert_close(out, call(reference, p), dtype, shape.id)


@pytest.mark.parametrize("shape", LARGE_SHAPES, ids=[s.id for s in LARGE_SHAPES])
def test_forward_large_vs_kron(shape):
    p = make_problem(shape)
    H = kron_hessians(p)
    assert_close(call(hessalign_ext, p), torch.einsum("aij,bij->ab", H, H))


def test_frobenius_gap_matches_explicit():
    p = make_problem(SHAPE["domainbed"])
    G = call(hessalign_ext, p)
    H = kron_hessians(p)
    gap = G[0, 0] - 2 * G[0, 1] + G[1, 1]
    assert_close(gap, (H[0] - H[1]).square().sum())
    assert torch.allclose(G, G.T)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", LOSS_CASE_IDS)
def test_loss_options(case, dtype):
    p = make_problem(LOSS_SHAPE, dtype)
    opts = LOSS_CASES[case](p)
    assert_close(call(hessalign_ext, p, **opts), call(reference, p, **opts), dtype)


@pytest.mark.parametrize("shape", SMALL_SHAPES, ids=SMALL_SHAPE_IDS)
def test_backward(shape):
    p = make_problem(shape, requires_grad=True)
    check_backward(lambda: call(hessalign_ext, p), lambda: call(reference, p), p, p.head())


@pytest.mark.parametrize("case", ["all_together_mean", "all_together_sum", "all_ignored_domain"])
def test_backward_loss_options(case):
    p = make_problem(LOSS_SHAPE, requires_grad=True)
    opts = LOSS_CASES[case](p)
    check_backward(lambda: call(hessalign_ext, p, **opts), lambda: call(reference, p, **opts), p, p.head())


def test_backward_float32():
    p = make_problem(SHAPE["domainbed"], torch.float32, requires_grad=True)
    check_backward(lambda: call(hessalign_ext, p), lambda: call(reference, p), p, p.head())


@pytest.mark.parametrize("shape", [SHAPE["tiny"], SHAPE["no_bias"], SHAPE["unequal"]], ids=["tiny", "no_bias", "unequal"])
def test_gradcheck(shape):
    p = make_problem(shape, requires_grad=True)
    opts = dict(labels=p.labels, label_smoothing=0.1, class_weight=p.class_weight)

    def f(z, w, b):
        return hessalign_ext.head_hessian_inner(z, w, b, p.offsets, **opts)

    assert torch.autograd.gradcheck(f, p.head())


@pytest.mark.parametrize("with_options", [False, True], ids=["plain", "options"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_opcheck(bias, with_options):
    p = make_problem(SHAPE["unequal"] if bias else SHAPE["no_bias"], requires_grad=True)
    ce = (p.labels, -100, p.class_weight, 0.2, "sum", 2) if with_options else (None, -100, None, 0.0, "mean", 0)
    torch.library.opcheck(torch.ops.hessalign_ext.head_hessian_inner.default, (*p.head(), p.offsets, *ce))


def test_compile():
    p = make_problem(SHAPE["unequal"], requires_grad=True)

    def f(z, w, b):
        return hessalign_ext.head_hessian_inner(z, w, b, p.offsets, labels=p.labels).square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    eager_val, comp_val = f(*p.head()), compiled(*p.head())
    assert_close(comp_val, eager_val)
    for a, b in zip(torch.autograd.grad(comp_val, p.head()), torch.autograd.grad(eager_val, p.head())):
        assert_close(a, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,tile", [("off_tile", 3), ("off_tile", 1), ("c1000", 64)])
def test_class_tile(shape, tile, dtype):
    p = make_problem(SHAPE[shape], dtype)
    opts = dict(labels=p.labels, class_weight=p.class_weight, label_smoothing=0.1)
    assert_close(call(hessalign_ext, p, class_tile=tile, **opts), call(hessalign_ext, p, **opts), dtype)


def test_class_tile_backward():
    p = make_problem(SHAPE["off_tile"], requires_grad=True)
    check_backward(lambda: call(hessalign_ext, p, class_tile=4), lambda: call(hessalign_ext, p), p, p.head())


def test_double_backward_raises():
    p = make_problem(SHAPE["unequal"], requires_grad=True)
    assert_double_backward_raises("head_hessian_inner", lambda: call(hessalign_ext, p), p.head())
