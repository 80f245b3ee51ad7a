"""head_hessian_inner: ⟨H_a, H_b⟩_F of every pair of domains, vs explicitly formed Hessians."""

import copy
import itertools

import pytest
import torch

import hessalign_ext
from conftest import DEVICES, DTYPES, SHAPE, SHAPES, assert_close, confident_head, make_problem
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


def _mp_inner(z, w, b, offsets, upstream):
    """Σ_ab U_ab ⟨H_a, H_b⟩_F of the plain mean loss at 60 significant digits (mpmath), from the
    row Hessians A_i ⊗ z̃_i z̃_iᵀ / n_e built entry by entry: no cancellation left at this precision."""
    mpmath = pytest.importorskip("mpmath")
    N, C = len(z), len(w)
    zt = [list(row) + ([mpmath.mpf(1)] if b is not None else []) for row in z]
    wt = [list(row) + ([b[c]] if b is not None else []) for c, row in enumerate(w)]
    A = []
    for i in range(N):
        logits = [mpmath.fsum(x * y for x, y in zip(zt[i], wt[c])) for c in range(C)]
        top = max(logits)
        ex = [mpmath.exp(v - top) for v in logits]
        p = [e / mpmath.fsum(ex) for e in ex]
        A.append([[(p[a] if a == c else 0) - p[a] * p[c] for c in range(C)] for a in range(C)])
    domain = [e for e in range(len(offsets) - 1) for _ in range(offsets[e], offsets[e + 1])]
    n = [offsets[e + 1] - offsets[e] for e in range(len(offsets) - 1)]
    total = mpmath.mpf(0)
    for i in range(N):
        for j in range(N):
            t = mpmath.fsum(A[i][a][c] * A[j][a][c] for a in range(C) for c in range(C))
            k = mpmath.fsum(x * y for x, y in zip(zt[i], zt[j]))
            total += upstream[domain[i]][domain[j]] * t * k * k / (n[domain[i]] * n[domain[j]])
    return total


@pytest.mark.parametrize("dtype, margin", [(torch.float32, 14.0), (torch.float64, 30.0)], ids=["f32", "f64"])
@pytest.mark.parametrize("class_tile", [None, 2], ids=["one_tile", "tiles_of_2"])
def test_confident_rows_keep_their_precision(dtype, margin, class_tile, monkeypatch):
    """Rows that put nearly all their mass on one class (p̄ ≈ 2–5e-6 at 14 nats in float32, 2–5e-13
    at 30 in float64) have Hessians of size p̄, and pairs of them an inner product of size p̄².
    Written as S - R - Rᵀ + S², T cancelled terms of size 1 to get there (off by over 100% here, and
    of the wrong sign in a float32 case the fuzz campaign found); the dominant-relative form keeps
    every entry and every gradient to the dtype's relative precision.
    Reference: the same quantities at 60 digits (mpmath), the gradients by central differences."""
    mpmath = pytest.importorskip("mpmath")
    monkeypatch.setattr(mpmath.mp, "dps", 60)  # restored after the test
    offsets = [0, 3, 5]
    # each row's confident class: pairs that share it, and pairs that do not
    z, w, b, g = confident_head([0, 0, 3, 0, 3], margin, d=6, C=5, seed=5)
    upstream = torch.randn(2, 2, generator=g, dtype=torch.float64)
    mp = lambda t: [mp(row) for row in t] if t.dim() == 2 else [mpmath.mpf(v) for v in t.tolist()]
    args = [mp(z), mp(w), mp(b)]
    U = mp(upstream)
    off = torch.tensor(offsets)

    G = [[_mp_inner(*args, offsets, [[1 if (x, y) == (a, c) else 0 for y in range(2)] for x in range(2)])
          for c in range(2)] for a in range(2)]
    expected = torch.tensor([[float(v) for v in row] for row in G], dtype=torch.float64)
    assert expected.min() > 0 and expected.max() < 1e-6  # the regime: tiny Hessians
    inputs = [t.to(dtype).requires_grad_() for t in (z, w, b)]
    got = hessalign_ext.head_hessian_inner(*inputs, off, class_tile=class_tile)
    rtol = 2e-4 if dtype == torch.float32 else 1e-9
    torch.testing.assert_close(got.double(), expected, rtol=rtol, atol=0)

    (got * upstream.to(dtype)).sum().backward()
    h = mpmath.mpf(10) ** -20

    def shifted(arg, idx, delta):
        out = copy.deepcopy(args)
        row = out[arg]
        for i in idx[:-1]:
            row = row[i]
        row[idx[-1]] += delta
        return out

    for name, arg, t in zip(["features", "weight", "bias"], range(3), inputs):
        ref = torch.zeros(t.shape, dtype=torch.float64)
        for idx in itertools.product(*(range(s) for s in t.shape)):
            ref[idx] = float((_mp_inner(*shifted(arg, idx, h), offsets, U)
                              - _mp_inner(*shifted(arg, idx, -h), offsets, U)) / (2 * h))
        torch.testing.assert_close(t.grad.double(), ref, rtol=rtol * 10, atol=rtol * 10 * ref.abs().max().item(),
                                   msg=lambda m: f"{name}: {m}")
