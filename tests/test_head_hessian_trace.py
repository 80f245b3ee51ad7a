"""head_hessian_trace: exact trace of each domain's Hessian, vs the double-backward reference."""

import pytest

import hessalign_ext
from hessalign_ext import reference
from conftest import DEVICES, DTYPES, SHAPE, SHAPE_IDS, SHAPES, assert_close, make_problem
from op_contract import OpContract


def call(impl, p, **opts):
    return impl.head_hessian_trace(*p.head(), p.offsets, **opts)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_forward(shape, dtype, device):
    p = make_problem(shape, dtype, device)
    out = call(hessalign_ext, p)
    assert out.shape == (shape.E,) and out.dtype == dtype and out.device == p.features.device
    assert_close(out, call(reference, p), dtype, shape.id)


def test_is_sum_of_diagonal():
    p = make_problem(SHAPE["off_tile"])
    opts = dict(labels=p.labels, class_weight=p.class_weight, label_smoothing=0.2)
    diag = hessalign_ext.head_hessian_diag(*p.head(), p.offsets, **opts)
    assert_close(call(hessalign_ext, p, **opts), diag.sum((1, 2)))


class TestContract(OpContract):
    op = "head_hessian_trace"
