"""hutchinson_diag: (1/K) Σ_k v_k ⊙ H_e v_k with counter-based Rademacher probes.

The reference recomputes the estimate with the probes of hessalign_ext.probes, so forward
tests check the exact probes, not statistics; test_converges checks the 1/sqrt(K) rate.
"""

import pytest
import torch

import hessalign_ext
from hessalign_ext import probes, reference
from conftest import (
    DTYPES, LOSS_CASE_IDS, LOSS_CASES, LOSS_SHAPE, SHAPE, SHAPE_IDS, SHAPES, Shape, assert_close,
    full_hessians, make_problem,
)
from op_contract import ProbeContract

K, SEED = ProbeContract.K, ProbeContract.SEED


def call(impl, p, num_probes=K, seed=SEED, **opts):
    return impl.hutchinson_diag(*p.head(), p.offsets, num_probes, seed, **opts)


# Golden values printed by a C++ program including csrc/math/rademacher.h: (seed, probe) ->
# (probe key, signs of elements 0..19 and of 56..75, across the first word boundary, as 1 for
# +1 and 0 for -1).
GOLDEN = {
    (0, 0): (12035550249420947055, "01110110100000101100", "00111011111110011100"),
    (0, 1): (627405149472732430, "11110010000000011001", "11011101001101110000"),
    (12345, 2): (10030526323443383777, "00000101100011100001", "00000000010111010101"),
    (-7, 0): (1533972906235141153, "11001010101100000101", "11010010000010110101"),
}


@pytest.mark.parametrize("seed,probe", list(GOLDEN))
def test_probes_golden(seed, probe):
    key, head, across = GOLDEN[(seed, probe)]
    assert probes.probe_key(seed, probe) == key
    v = probes.rademacher(seed, probe, 16, 5).flatten().tolist()
    assert "".join("1" if x > 0 else "0" for x in v[:20]) == head
    assert "".join("1" if x > 0 else "0" for x in v[56:76]) == across


def test_probes_class_tile_and_determinism():
    full = probes.rademacher(5, 1, 10, 7)
    assert full.dtype == torch.float64 and set(full.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(probes.rademacher(5, 1, 10, 7, class_start=3, num_class=4), full[3:7])
    assert torch.equal(probes.rademacher(5, 1, 10, 7), full)
    assert not torch.equal(probes.rademacher(6, 1, 10, 7), full)
    assert not torch.equal(probes.rademacher(5, 2, 10, 7), full)


def test_probes_are_balanced_and_uncorrelated():
    """Each of a hash's 64 bits is its own fair sign: over 2^17 elements of 8 probes the mean, the
    mean at each bit position and the neighbour and cross-probe correlations are within 5 sigma."""
    v = probes.rademacher_probes(11, 8, 64, 256).reshape(8, -1)  # 8 probes x 2^14 elements
    tol = 5 / v.numel() ** 0.5
    assert abs(v.mean().item()) < tol
    assert (v.reshape(-1, 64).mean(0).abs() < 5 / (v.numel() / 64) ** 0.5).all()
    assert abs((v[:, 1:] * v[:, :-1]).mean().item()) < tol
    assert abs((v[1:] * v[:-1]).mean().item()) < tol


def test_one_probe_is_v_times_hvp():
    p = make_problem(SHAPE["domainbed"])
    v = probes.rademacher(SEED, 0, p.shape.C, p.shape.D)
    expected = v * hessalign_ext.head_hvp(*p.head(), v, p.offsets)
    assert_close(call(hessalign_ext, p, 1), expected)


# More probes than a domain has rows: the by-class fold (math/hutchinson_diag.h); class tiles
# force the by-domain fold on the same problem.
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_class_fold(shape, dtype):
    p = make_problem(shape, dtype)
    k = max(shape.sizes, default=0) + 2
    by_class = call(hessalign_ext, p, k)
    assert_close(by_class, call(reference, p, k), dtype, shape.id)
    if shape.C > 1:
        assert_close(by_class, call(hessalign_ext, p, k, class_tile=shape.C - 1), dtype, shape.id)


@pytest.mark.parametrize("case", LOSS_CASE_IDS)
def test_class_fold_loss_options(case):
    p = make_problem(LOSS_SHAPE)
    opts = LOSS_CASES[case](p)
    k = max(LOSS_SHAPE.sizes) + 1
    assert_close(call(hessalign_ext, p, k, **opts), call(reference, p, k, **opts))


@pytest.mark.parametrize("shape", [SHAPE[s] for s in ("unequal", "equal", "c1000", "empty_domain")],
                         ids=["unequal", "equal", "c1000", "empty_domain"])
def test_fold_by_domain_a_domain_at_a_time(shape, monkeypatch):
    """A budget below one probe's per-domain products (E, T, D): the by-domain fold runs one
    domain's GEMM and fold at a time."""
    p = make_problem(shape)
    expected = call(reference, p)
    monkeypatch.setenv("HESSALIGN_TILE_BYTES", "500")
    assert_close(call(hessalign_ext, p), expected, shape_id=shape.id)


def test_fold_choice():
    """By class (one batched GEMM of probes per block of classes) from K = the largest domain's
    rows; by domain (a GEMM per domain, unequal domains here) below it or with class tiles."""
    p = make_problem(SHAPE["unequal"])

    def gemms(num_probes, **opts):
        with torch.profiler.profile() as prof:
            call(hessalign_ext, p, num_probes, **opts)
        return {e.name for e in prof.events()} & {"aten::bmm", "aten::mm"}

    rows = max(SHAPE["unequal"].sizes)
    assert "aten::bmm" in gemms(rows)
    assert "aten::bmm" not in gemms(rows - 1)
    assert "aten::bmm" not in gemms(rows, class_tile=2)


# Small enough to form each domain's full Hessian for the variance.
STAT_SHAPE = Shape("stat", (6, 9), C=4, d=3)
STAT_SEEDS = range(8)
STAT_KS = (4, 64, 1024)


def test_converges():
    """E‖D_K − diag H‖² = ‖offdiag H‖_F² / K for Rademacher probes.

    Over 8 fixed seeds, K·(mean squared error) must lie within a factor 3 of ‖offdiag H‖_F²
    for every K in (4, 64, 1024), so the error shrinks as 1/sqrt(K).
    """
    p = make_problem(STAT_SHAPE)
    h = full_hessians(p)
    exact = torch.diagonal(h, dim1=1, dim2=2)
    offdiag_sq = (h.square().sum((1, 2)) - exact.square().sum(1))  # (E,)
    mse = {}
    for k in STAT_KS:
        errs = [(call(hessalign_ext, p, k, s).flatten(1) - exact).square().sum(1) for s in STAT_SEEDS]
        mse[k] = torch.stack(errs).mean(0)  # (E,)
        ratio = k * mse[k] / offdiag_sq
        assert ((ratio > 1 / 3) & (ratio < 3)).all(), (k, ratio)
    assert (mse[1024] < mse[4] / 50).all()


class TestContract(ProbeContract):
    op = "hutchinson_diag"
    out = "params"
