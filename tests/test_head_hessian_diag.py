"""head_hessian_diag: exact diagonal of each domain's Hessian, vs the double-backward reference."""

import pytest
import torch

import hessalign_ext
from hessalign_ext import reference
from conftest import (
    DEVICES, DTYPES, LOSS_CASE_IDS, LOSS_CASES, LOSS_SHAPE, SHAPE, SHAPE_IDS, SHAPES, SMALL_SHAPE_IDS,
    SMALL_SHAPES, assert_close, assert_double_backward_raises, check_backward, make_problem,
)


def call(impl, p, **opts):
    return impl.head_hessian_diag(*p.head(), p.offsets, **opts)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_forward(shape, dtype, device):
    p = make_problem(shape, dtype, device)
    out = call(hessalign_ext, p)
    assert out.shape == (shape.E, shape.C, shape.D) and out.dtype == dtype and out.device == p.features.device
    assert_close(out, call(reference, p), dtype, shape.id)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", LOSS_CASE_IDS)
def test_loss_options(case, dtype):
    p = make_problem(LOSS_SHAPE, dtype)
    opts = LOSS_CASES[case](p)
    assert_close(call(hessalign_ext, p, **opts), call(reference, p, **opts), dtype)


def test_matches_hvp_with_basis_vectors():
    # diag(H_e)_j = e_jᵀ H_e e_j, with head_hvp doing the products (all coordinates at once
    # is C·D HVPs; a few suffice).
    p = make_problem(SHAPE["unequal"])
    diag = call(hessalign_ext, p)
    for c, j in [(0, 0), (2, 3), (4, 6)]:
        v = torch.zeros(p.shape.C, p.shape.D, dtype=torch.float64)
        v[c, j] = 1.0
        hv = hessalign_ext.head_hvp(*p.head(), v, p.offsets)
        assert_close(diag[:, c, j], hv[:, c, j])


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


@pytest.mark.parametrize("shape", [SHAPE["tiny"], SHAPE["no_bias"]], ids=["tiny", "no_bias"])
def test_gradcheck(shape):
    p = make_problem(shape, requires_grad=True)
    opts = dict(labels=p.labels, label_smoothing=0.1, class_weight=p.class_weight)

    def f(z, w, b):
        return hessalign_ext.head_hessian_diag(z, w, b, p.offsets, **opts)

    assert torch.autograd.gradcheck(f, p.head())


@pytest.mark.parametrize("with_options", [False, True], ids=["plain", "options"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_opcheck(bias, with_options):
    p = make_problem(SHAPE["unequal"] if bias else SHAPE["no_bias"], requires_grad=True)
    if with_options:
        ce = (p.labels, -100, p.class_weight, 0.2, "sum", 2)
    else:
        ce = (None, -100, None, 0.0, "mean", 0)
    torch.library.opcheck(torch.ops.hessalign_ext.head_hessian_diag.default, (*p.head(), p.offsets, *ce))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_compile(bias):
    p = make_problem(SHAPE["unequal"] if bias else SHAPE["no_bias"], requires_grad=True)
    inputs = [t for t in p.head() if t is not None]

    def f(z, w, b):
        return hessalign_ext.head_hessian_diag(z, w, b, p.offsets, labels=p.labels).square().sum()

    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    eager_val = f(*p.head())
    comp_val = compiled(*p.head())
    assert_close(comp_val, eager_val)
    for a, b in zip(torch.autograd.grad(comp_val, inputs), torch.autograd.grad(eager_val, inputs)):
        assert_close(a, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,tile", [("off_tile", 3), ("off_tile", 1), ("c1000", 64), ("c1000", 999)])
def test_class_tile(shape, tile, dtype):
    p = make_problem(SHAPE[shape], dtype)
    opts = dict(labels=p.labels, class_weight=p.class_weight, label_smoothing=0.1)
    assert_close(call(hessalign_ext, p, class_tile=tile, **opts), call(hessalign_ext, p, **opts), dtype)


def test_class_tile_backward():
    p = make_problem(SHAPE["off_tile"], requires_grad=True)
    check_backward(lambda: call(hessalign_ext, p, class_tile=4), lambda: call(hessalign_ext, p), p, p.head())


def test_double_backward_raises():
    p = make_problem(SHAPE["unequal"], requires_grad=True)
    assert_double_backward_raises("head_hessian_diag", lambda: call(hessalign_ext, p), p.head())
