"""head_hessian_diag: exact diagonal of each domain's Hessian, vs the double-backward reference."""

import torch

import hessalign_ext
from conftest import SHAPE, assert_close, make_problem
from op_contract import OpContract


def call(impl, p, **opts):
    return impl.head_hessian_diag(*p.head(), p.offsets, **opts)


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


class TestContract(OpContract):
    op = "head_hessian_diag"
    out = "params"
