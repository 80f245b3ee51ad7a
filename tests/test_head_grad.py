"""head_grad: gradient of each domain's loss with respect to [W | b], vs autograd."""

import torch

import hessalign_ext
from conftest import SHAPE, assert_close, make_problem
from op_contract import OpContract


def call(impl, p, labels=None, **opts):
    return impl.head_grad(*p.head(), p.labels if labels is None else labels, p.offsets, **opts)


def test_matches_torch_linear_backward():
    # One domain: the gradient torch computes for nn.functional.linear + cross_entropy.
    p = make_problem(SHAPE["domainbed"])
    w = p.weight.clone().requires_grad_(True)
    b = p.bias.clone().requires_grad_(True)
    lo, hi = int(p.offsets[1]), int(p.offsets[2])
    loss = torch.nn.functional.cross_entropy(torch.nn.functional.linear(p.features[lo:hi], w, b), p.labels[lo:hi])
    gw, gb = torch.autograd.grad(loss, (w, b))
    assert_close(call(hessalign_ext, p)[1], torch.cat([gw, gb[:, None]], 1))


class TestContract(OpContract):
    op = "head_grad"
    out = "params"
    labels_positional = True
