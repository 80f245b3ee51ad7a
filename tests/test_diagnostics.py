"""hessalign_ext.diagnostics: ‖H_a − H_b‖₂ against torch.linalg on explicit Hessians."""

from __future__ import annotations

import pytest
import torch

from hessalign_ext import diagnostics
from single_thread import one_torch_thread  # noqa: F401  (autouse fixture)

F64 = torch.float64


def explicit_hessians(features, weight, bias, labels, offsets, ce_options):
    """(E, C·D, C·D) Hessians of each domain's cross-entropy over θ = [W | b], by autograd;
    ``ce_options``: keywords of ``torch.nn.functional.cross_entropy``."""
    C, d = weight.shape
    out = []
    for s, t in zip(offsets.tolist(), offsets.tolist()[1:]):
        def loss(theta, s=s, t=t):
            th = theta.reshape(C, d + 1)
            logits = features[s:t] @ th[:, :d].T + th[:, d]
            return torch.nn.functional.cross_entropy(logits, labels[s:t], **ce_options)

        out.append(torch.autograd.functional.hessian(loss, torch.cat([weight, bias[:, None]], 1).reshape(-1)))
    return torch.stack(out)


def problem(seed=0, sizes=(7, 12, 4), C=3, d=4):
    g = torch.Generator().manual_seed(seed)
    N = sum(sizes)
    features = torch.randn(N, d, generator=g, dtype=F64)
    weight = torch.randn(C, d, generator=g, dtype=F64)
    bias = torch.randn(C, generator=g, dtype=F64)
    labels = torch.randint(0, C, (N,), generator=g)
    offsets = torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()])
    return features, weight, bias, labels, offsets


@pytest.mark.parametrize("loss_options", [{}, {"label_smoothing": 0.3, "class_weight": "random"}],
                         ids=["plain", "options"])
def test_hessian_gaps_match_linalg(loss_options):
    z, W, b, y, off = problem()
    opts = dict(loss_options)
    if opts.get("class_weight") == "random":
        opts["class_weight"] = torch.rand(3, dtype=F64, generator=torch.Generator().manual_seed(1)) + 0.5
    ce_options = {("weight" if k == "class_weight" else k): v for k, v in opts.items()}
    H = explicit_hessians(z, W, b, y, off, ce_options)
    dim = H.shape[1]
    gaps = diagnostics.hessian_gaps(z, W, b, off, labels=y, num_iters=dim, **opts)
    assert set(gaps) == {(0, 1), (0, 2), (1, 2)}
    for (a, c), gap in gaps.items():
        expected = torch.linalg.matrix_norm(H[a] - H[c], ord=2).item()
        assert gap == pytest.approx(expected, rel=1e-10)
    power = diagnostics.hessian_gap(z, W, b, off, 0, 2, labels=y, method="power", num_iters=2000, **opts)
    assert power == pytest.approx(torch.linalg.matrix_norm(H[0] - H[2], ord=2).item(), rel=1e-6)


def test_lanczos_and_power_on_indefinite_matrix_with_tied_extremes():
    """Eigenvalues ±3 tie in absolute value: power iteration oscillates between the two
    eigenvectors, yet ‖A v‖ still converges; Lanczos is exact once its basis spans R^n."""
    g = torch.Generator().manual_seed(2)
    Q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=F64))
    A = Q @ torch.diag(torch.tensor([3.0, -3.0, 2.0, -1.5, 1.0, 0.5, -0.2, 0.1], dtype=F64)) @ Q.T
    like = A[0]
    assert diagnostics.lanczos_spectral_norm(lambda v: A @ v, 8, like, num_iters=8) == pytest.approx(3.0, rel=1e-12)
    assert diagnostics.power_spectral_norm(lambda v: A @ v, 8, like, num_iters=300) == pytest.approx(3.0, rel=1e-6)
    short = diagnostics.lanczos_spectral_norm(lambda v: A @ v, 8, like, num_iters=3)
    assert short <= 3.0 + 1e-12  # Ritz values are a lower bound before convergence


def test_zero_gap_for_identical_domains():
    z, W, b, y, _ = problem(sizes=(6,))
    twice = torch.cat([z, z])
    gap = diagnostics.hessian_gap(twice, W, b, torch.tensor([0, 6, 12]), 0, 1, labels=torch.cat([y, y]))
    assert gap <= 1e-14


def test_bad_arguments():
    z, W, b, y, off = problem()
    with pytest.raises(ValueError, match="method"):
        diagnostics.hessian_gaps(z, W, b, off, method="qr")
    with pytest.raises(ValueError, match="outside"):
        diagnostics.hessian_gaps(z, W, b, off, pairs=[(0, 3)])
