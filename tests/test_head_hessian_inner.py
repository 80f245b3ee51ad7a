"""head_hessian_inner: ⟨H_a, H_b⟩_F of every pair of domains, vs explicitly formed Hessians."""

import pytest
import torch

import hessalign_ext
from conftest import DEVICES, DTYPES, SHAPE, SHAPES, assert_close, make_problem
from op_contract import OpContract

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


def test_gradcheck_unequal_domains():
    """gradcheck (the contract's takes the tiny and no-bias heads) where the domains' rows differ."""
    p = make_problem(SHAPE["unequal"], requires_grad=True)
    opts = dict(labels=p.labels, label_smoothing=0.1, class_weight=p.class_weight)
    assert torch.autograd.gradcheck(lambda z, w, b: hessalign_ext.head_hessian_inner(z, w, b, p.offsets, **opts),
                                    p.head())


class TestContract(OpContract):
    op = "head_hessian_inner"
    out = "pairs"

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("shape", REF_SHAPES, ids=[s.id for s in REF_SHAPES])
    def test_forward(self, shape, dtype, device):
        super().test_forward(shape, dtype, device)
