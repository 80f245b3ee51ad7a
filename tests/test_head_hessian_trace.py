"""head_hessian_trace: exact trace of each domain's Hessian, vs the double-backward reference."""


import hessalign_ext
from conftest import SHAPE, assert_close, make_problem
from op_contract import OpContract


def call(impl, p, **opts):
    return impl.head_hessian_trace(*p.head(), p.offsets, **opts)


def test_is_sum_of_diagonal():
    p = make_problem(SHAPE["off_tile"])
    opts = dict(labels=p.labels, class_weight=p.class_weight, label_smoothing=0.2)
    diag = hessalign_ext.head_hessian_diag(*p.head(), p.offsets, **opts)
    assert_close(call(hessalign_ext, p, **opts), diag.sum((1, 2)))


class TestContract(OpContract):
    op = "head_hessian_trace"
    out = "domains"
