"""Large heads: every op, forward and backward, streamed over many class tiles, against the
float64 reference; the tile choice made automatically by the memory rule
(HESSALIGN_TILE_BYTES); and the peak extra memory of the tiled path against plain torch.

GPU rows (C = 32768 to 262144, d = 4096, bf16) are measured by scripts/gpu_check.sh only.
"""
import os
import pathlib
import subprocess
import sys

import pytest
import torch

import hessalign_ext
from hessalign_ext import reference
from conftest import Shape, assert_close, aten_calls, check_backward, make_problem

HELPER = pathlib.Path(__file__).parent / "helpers" / "peak_memory.py"
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
from timing import allocator_peak  # noqa: E402  (the benchmarks' CPU memory figure)
# C in the thousands, streamed in tiles of 96 classes (21 tiles, the last one partial).
LARGE = Shape("large_head", (9, 1, 14), C=2000, d=5)
TILE = 96
# The reference's exact diagonal, trace and inner product cost C·D double-backward passes, and
# their backward a third differentiation of each: a smaller head for them, still 13 tiles of 32.
EXACT = Shape("exact_head", (6, 1, 5), C=400, d=1)
EXACT_OPS = ("head_hessian_diag", "head_hessian_trace", "head_hessian_inner")
OPS = ["domain_losses", "head_grad", "head_hvp", "head_hessian_diag", "head_hessian_trace", "head_hessian_inner",
       "hutchinson_diag", "hutchinson_trace"]


def call(impl, op, p, **opts):
    f = getattr(impl, op)
    labels = dict(labels=p.labels) if op not in ("domain_losses", "head_grad") else {}
    if op in ("domain_losses", "head_grad"):
        return f(*p.head(), p.labels, p.offsets, **opts)
    if op == "head_hvp":
        return f(*p.head(), p.vectors, p.offsets, **labels, **opts)
    if op.startswith("hutchinson"):
        return f(*p.head(), p.offsets, 3, 5, **labels, **opts)
    return f(*p.head(), p.offsets, **labels, **opts)


def inputs(op, p):
    return (*p.head(), p.vectors) if op == "head_hvp" else p.head()


@pytest.mark.parametrize("op", OPS)
def test_tiled_forward_and_backward_vs_reference(op):
    p = make_problem(EXACT if op in EXACT_OPS else LARGE, requires_grad=True)
    tile = 32 if op in EXACT_OPS else TILE
    opts = dict(class_weight=p.class_weight.detach(), label_smoothing=0.1)
    assert_close(call(hessalign_ext, op, p, class_tile=tile, **opts), call(reference, op, p, **opts))
    check_backward(lambda: call(hessalign_ext, op, p, class_tile=tile, **opts),
                   lambda: call(reference, op, p, **opts), p, inputs(op, p))


@pytest.mark.parametrize("op", OPS)
def test_memory_rule_picks_tiles_automatically(op, monkeypatch):
    """A small budget makes the op stream over tiles on its own: same results as one tile."""
    p = make_problem(LARGE, requires_grad=True)
    whole = call(hessalign_ext, op, p, class_tile=LARGE.C)
    up = torch.randn(whole.shape, dtype=whole.dtype, generator=torch.Generator().manual_seed(3))
    g_whole = torch.autograd.grad(whole, inputs(op, p), up)
    monkeypatch.setenv("HESSALIGN_TILE_BYTES", str(64 * 1024))  # N×T buffers of 64 KiB: tiles of ~64 classes
    tiled = call(hessalign_ext, op, p)
    assert_close(tiled, whole)
    for a, b in zip(torch.autograd.grad(tiled, inputs(op, p), up), g_whole):
        assert_close(a, b)


def logits_gemms(op, p, monkeypatch, budget) -> int:
    """The op's logits GEMMs (ATen's addmm, the bias added in it) under a tile budget of bytes."""
    monkeypatch.setenv("HESSALIGN_TILE_BYTES", str(budget))
    monkeypatch.setenv("HESSALIGN_CPU_GEMM", "aten")
    with torch.no_grad():
        return aten_calls(lambda: call(hessalign_ext, op, p), "aten::addmm")


@pytest.mark.parametrize("op,buffers", [("domain_losses", 1), ("head_grad", 2), ("head_hvp", 3)])
def test_tile_rule_counts_the_probabilities_only_where_they_are_kept(op, buffers, monkeypatch):
    """The CPU keeps one tile's probabilities, one N×T buffer more, for the ops that read them
    (the HVP's forward: 2 buffers and the probabilities); the forwards of domain_losses (1 buffer)
    and head_grad (2) keep none. Under a budget of exactly the buffers the rule should count for
    all C classes, the op takes one tile, whose logits GEMM runs once; a byte less, it streams
    (a logits GEMM per tile and pass)."""
    p = make_problem(LARGE)
    fits = p.features.shape[0] * p.features.element_size() * buffers * LARGE.C
    assert logits_gemms(op, p, monkeypatch, fits) == 1
    assert logits_gemms(op, p, monkeypatch, fits - 1) > 2


@pytest.mark.parametrize("op", ["head_grad", "head_hvp", "head_hessian_diag"])
def test_peak_memory_is_a_fraction_of_plain_torch(op):
    """Forward + backward at N=4096, C=8192, d=64 (128 MiB of float32 logits) with an 8 MiB
    tile budget: the tiled op's peak extra memory is at most 1/8 of the plain closed form's
    (which holds the N×C logits and probabilities; the target of the large-heads issue)."""
    env = dict(os.environ, HESSALIGN_TILE_BYTES=str(8 << 20), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, str(HELPER), op, "4096", "8192", "64"], env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    ours, plain = map(int, out.stdout.split())
    assert plain > 4096 * 8192 * 4, f"plain torch should hold at least the logits; measured {plain} bytes"
    assert 8 * ours <= plain, f"{op}: tiled path peak {ours / 2**20:.1f} MiB vs plain {plain / 2**20:.1f} MiB"


# Padded GEMM width (padded_width.h, align_rows_for; HESSALIGN_ALIGN_ROWS=1): every D-wide GEMM
# operand in a buffer whose extra columns are zero, the GEMMs over the whole padded width. Here on
# heads with odd D (d + 1 with a bias, or an odd d without), equal and unequal domains, one tile
# and many, and ("staged") one tile of all 150 classes under a budget that copies the caller's
# blocks and the results into padded buffers 16 rows at a time (Head::stage_rows: 9 chunks and
# one of 6): every op and its backward agree with the plain layout to rounding.
ALIGN_SHAPES = [Shape("unequal", (9, 1, 14), C=150, d=6), Shape("equal", (8, 8, 8), C=150, d=6),
                Shape("odd_d_no_bias", (7, 9), C=150, d=5, bias=False)]
STAGED_BUDGET = "600"  # bytes: below 16 padded rows of any (E, M, D) or (M, D) block here


@pytest.mark.parametrize("shape", ALIGN_SHAPES, ids=lambda s: s.id)
@pytest.mark.parametrize("tile", [None, 64, "staged"])
@pytest.mark.parametrize("op", OPS)
def test_aligned_rows_give_the_plain_results(op, tile, shape, monkeypatch):
    p = make_problem(shape, dtype=torch.float32, requires_grad=True)
    if tile == "staged":
        monkeypatch.setenv("HESSALIGN_TILE_BYTES", STAGED_BUDGET)
        tile = shape.C
    opts = dict(class_tile=tile, label_smoothing=0.1)
    results = []
    for flag in ("0", "1"):
        monkeypatch.setenv("HESSALIGN_ALIGN_ROWS", flag)
        out = call(hessalign_ext, op, p, **opts)
        up = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
        grads = torch.autograd.grad(out, [x for x in inputs(op, p) if x is not None], up)
        results.append((out, grads))
    (plain, g_plain), (aligned, g_aligned) = results
    torch.testing.assert_close(aligned, plain, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_aligned, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# The Hutchinson diagonal's two other paths under the padded width: the by-class fold (more probes
# than a domain has rows) and the by-domain fold a domain at a time (a budget below one probe's
# per-domain products).
@pytest.mark.parametrize("shape", ALIGN_SHAPES, ids=lambda s: s.id)
@pytest.mark.parametrize("path", ["class_fold", "domain_at_a_time"])
def test_aligned_rows_give_the_plain_hutchinson_diag(path, shape, monkeypatch):
    p = make_problem(shape, dtype=torch.float32, requires_grad=True)
    num_probes = max(shape.sizes) + 2 if path == "class_fold" else 3
    if path == "domain_at_a_time":
        monkeypatch.setenv("HESSALIGN_TILE_BYTES", "500")
    results = []
    for flag in ("0", "1"):
        monkeypatch.setenv("HESSALIGN_ALIGN_ROWS", flag)
        out = hessalign_ext.hutchinson_diag(*p.head(), p.offsets, num_probes, 5, labels=p.labels)
        up = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
        results.append((out, torch.autograd.grad(out, [x for x in p.head() if x is not None], up)))
    (plain, g_plain), (aligned, g_aligned) = results
    torch.testing.assert_close(aligned, plain, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_aligned, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def random_head(N, C, d, g):
    """Features, weight and bias of a random head, requiring grad."""
    z = torch.randn(N, d, generator=g, requires_grad=True)
    w = (torch.randn(C, d, generator=g) / d**0.5).requires_grad_(True)
    b = torch.randn(C, generator=g, requires_grad=True)
    return z, w, b


def padded_width_extra_mib(monkeypatch, call) -> float:
    """MiB more at call()'s allocator peak with the padded width (HESSALIGN_ALIGN_ROWS=1) than
    without, each after a warm-up call, whose one-off growth is not counted."""
    peaks = []
    for flag in ("0", "1"):
        monkeypatch.setenv("HESSALIGN_ALIGN_ROWS", flag)
        call()
        peaks.append(allocator_peak(call))
    return (peaks[1] - peaks[0]) / 2**20


@pytest.mark.parametrize("op", ["head_grad", "head_hessian_diag"])
def test_padded_width_stages_the_upstream_block_within_the_budget(op, monkeypatch):
    """The backward's upstream gradient (2, 8192, 513) float32, 32 MiB padded, in one class tile:
    with the padded width it is staged in padded buffers of at most the memory rule's budget, so
    under a 2 MiB budget the backward holds about 2 MiB more than without it; under 64 MiB, which
    it fits, the whole block more (a second copy, what the padded width held before staging)."""
    g = torch.Generator().manual_seed(0)
    N, C, d = 256, 8192, 512
    z, w, b = random_head(N, C, d, g)
    labels, offsets = torch.randint(0, C, (N,), generator=g), torch.tensor([0, N // 3, N])
    up = torch.randn(2, C, d + 1, generator=g)

    def call():
        if op == "head_grad":
            out = hessalign_ext.head_grad(z, w, b, labels, offsets, class_tile=C)
        else:
            out = hessalign_ext.head_hessian_diag(z, w, b, offsets, labels=labels, class_tile=C)
        torch.autograd.grad(out, (z, w, b), up)

    def extra(budget_mib):
        monkeypatch.setenv("HESSALIGN_TILE_BYTES", str(budget_mib << 20))
        return padded_width_extra_mib(monkeypatch, call)

    block_mib = 2 * C * 516 * 4 / 2**20
    assert extra(2) <= 3, "staged in chunks of at most the budget"
    assert extra(64) >= 0.9 * block_mib, "a budget the block fits stages it whole"


@pytest.mark.parametrize("op", ["hutchinson_diag", "hutchinson_trace"])
def test_padded_width_draws_the_probes_into_padded_rows(op, monkeypatch):
    """The probe blocks, and the diagonal backward's upstream blocks, are written straight into
    padded rows (RademacherFillOp and ProbeUpstreamOp take row strides), so the padded width holds
    no second copy of them: at 256 rows in 3 domains, d = 512, C = 1024, K = 64 in one class tile
    its peak is within 0.5 MiB of the plain layout's (copies made it 4.0 MiB more for the trace's
    forward and 8.1 MiB for the diagonal's forward and backward)."""
    g = torch.Generator().manual_seed(0)
    N, C, d = 256, 1024, 512
    z, w, b = random_head(N, C, d, g)
    offsets = torch.tensor([0, 100, 180, N])
    up = torch.randn(3, C, d + 1, generator=g) if op == "hutchinson_diag" else torch.randn(3, generator=g)

    def call():
        out = getattr(hessalign_ext, op)(z, w, b, offsets, 64, 3, class_tile=C)
        torch.autograd.grad(out, (z, w, b), up)

    extra = padded_width_extra_mib(monkeypatch, call)
    assert extra <= 0.5, f"padded width holds {extra:.2f} MiB more"
