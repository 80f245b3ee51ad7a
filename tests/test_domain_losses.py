"""domain_losses: each domain's cross-entropy loss, vs torch.nn.functional.cross_entropy."""

import torch

import hessalign_ext
from hessalign_ext import reference
from conftest import SHAPE, assert_close, make_problem
from op_contract import OpContract


def call(impl, p, labels=None, **opts):
    return impl.domain_losses(*p.head(), p.labels if labels is None else labels, p.offsets, **opts)


def test_matches_cross_entropy_of_all_rows():
    # With equal domain sizes, the mean of the per-domain means is the loss over all rows.
    p = make_problem(SHAPE["domainbed"])
    logits = torch.nn.functional.linear(p.features, p.weight, p.bias)
    assert_close(call(hessalign_ext, p).mean(), torch.nn.functional.cross_entropy(logits, p.labels))
    assert_close(call(hessalign_ext, p, reduction="sum").sum(),
                 torch.nn.functional.cross_entropy(logits, p.labels, reduction="sum"))


def test_logits_1e4_finite():
    p = make_problem(SHAPE["logits_1e4"], torch.float32)
    p.bias[0] += 50.0  # a decisive margin: the loss of rows not labelled 0 is ≈ 50
    out = call(hessalign_ext, p)
    assert torch.isfinite(out).all()
    assert_close(out, call(reference, p), torch.float32, "logits_1e4")


class TestContract(OpContract):
    op = "domain_losses"
    out = "domains"
    labels_positional = True
