"""head_hvp: H_e v_e per domain, vs the double-backward reference."""

import pytest
import torch

import hessalign_ext
from hessalign_ext import reference
from conftest import DTYPES, SHAPE, assert_close, check_backward, make_problem
from op_contract import OpContract


def call(impl, p, vectors=None, **opts):
    return impl.head_hvp(*p.head(), p.vectors if vectors is None else vectors, p.offsets, **opts)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [SHAPE["domainbed"], SHAPE["no_bias"]], ids=["domainbed", "no_bias"])
def test_shared_vectors(shape, dtype):
    p = make_problem(shape, dtype)
    shared = p.vectors[0]
    out = call(hessalign_ext, p, shared)
    assert_close(out, call(reference, p, shared), dtype)
    assert_close(out, call(hessalign_ext, p, shared.expand_as(p.vectors)), dtype)


def test_noncontiguous_vectors_and_weight():
    p = make_problem(SHAPE["domainbed"])
    v = p.vectors.transpose(1, 2).contiguous().transpose(1, 2)
    w = p.weight.t().contiguous().t()
    assert not v.is_contiguous() and not w.is_contiguous()
    out = hessalign_ext.head_hvp(p.features, w, p.bias, v, p.offsets)
    assert_close(out, call(reference, p))


def test_no_labels_is_plain_mean_loss():
    p = make_problem(SHAPE["unequal"])
    assert_close(call(hessalign_ext, p), call(reference, p, labels=p.labels))


@pytest.mark.parametrize("align", ["0", "1"], ids=["plain", "padded_width"])
@pytest.mark.parametrize("tile", [None, 2], ids=["one_tile", "class_tiles"])
@pytest.mark.parametrize("shape", ["unequal", "equal", "empty_domain", "no_rows"])
def test_backward_shared_vectors(shape, tile, align, monkeypatch):
    """The gradient of shared vectors, Σ_e dS_eᵀ Z̃_e, is one GEMM over all rows per class tile."""
    monkeypatch.setenv("HESSALIGN_ALIGN_ROWS", align)
    p = make_problem(SHAPE[shape], requires_grad=True)
    v = p.vectors[-1].detach().clone().requires_grad_(True)
    check_backward(lambda: call(hessalign_ext, p, v, class_tile=tile), lambda: call(reference, p, v), p,
                   (*p.head(), v))


def test_labels_not_differentiable_and_inputs_unchanged():
    p = make_problem(SHAPE["noncontiguous"])
    before = [t.clone() for t in (*p.head(), p.vectors)]
    call(hessalign_ext, p, labels=p.labels, class_weight=p.class_weight)
    for a, b in zip(before, (*p.head(), p.vectors)):
        assert torch.equal(a, b)


class TestContract(OpContract):
    op = "head_hvp"
    out = "params"

    def inputs(self, p):
        return (*p.head(), p.vectors)
