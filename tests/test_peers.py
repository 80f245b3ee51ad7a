"""Agreement with peer libraries on one domain: BackPACK's DiagHessian, curvlinops' HVP."""

import pytest
import torch

import hessalign_ext
from conftest import Shape, assert_close, make_problem

# One domain, mean reduction: what nn.Linear + nn.CrossEntropyLoss() computes.
PEER_SHAPES = [Shape("peer", (12,), C=6, d=5), Shape("peer_no_bias", (7,), C=4, d=9, bias=False)]
PEER_IDS = [s.id for s in PEER_SHAPES]


def _linear(p):
    lin = torch.nn.Linear(p.shape.d, p.shape.C, bias=p.shape.bias).double()
    with torch.no_grad():
        lin.weight.copy_(p.weight)
        if p.shape.bias:
            lin.bias.copy_(p.bias)
    return lin


def _as_params(p, out):
    """(C, D) block -> [weight part, bias part] like a module's parameters."""
    return [out[:, : p.shape.d], out[:, p.shape.d]] if p.shape.bias else [out]


# BackPACK hooks fire on module outputs when no input requires grad: expected here.
@pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning")
@pytest.mark.parametrize("shape", PEER_SHAPES, ids=PEER_IDS)
def test_diag_matches_backpack(shape):
    backpack = pytest.importorskip("backpack", reason="backpack-for-pytorch is not installed")
    from backpack.extensions import DiagHessian

    p = make_problem(shape)
    model = backpack.extend(_linear(p))
    loss_fn = backpack.extend(torch.nn.CrossEntropyLoss())
    loss = loss_fn(model(p.features), p.labels)
    with backpack.backpack(DiagHessian()):
        loss.backward()
    ours = hessalign_ext.head_hessian_diag(*p.head(), p.offsets, labels=p.labels)[0]
    for mine, param in zip(_as_params(p, ours), model.parameters()):
        assert_close(mine, param.diag_h)


@pytest.mark.parametrize("shape", PEER_SHAPES, ids=PEER_IDS)
def test_hvp_matches_curvlinops(shape):
    curvlinops = pytest.importorskip("curvlinops", reason="curvlinops-for-pytorch is not installed")

    p = make_problem(shape)
    model = _linear(p)
    params = list(model.parameters())
    H = curvlinops.HessianLinearOperator(model, torch.nn.CrossEntropyLoss(), params, [(p.features, p.labels)])
    v = p.vectors[0]
    theirs = H @ _as_params(p, v)
    ours = hessalign_ext.head_hvp(*p.head(), v, p.offsets, labels=p.labels)[0]
    for mine, t in zip(_as_params(p, ours), theirs):
        assert_close(mine, t)
