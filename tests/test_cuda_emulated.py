"""Every custom CUDA kernel of csrc/cuda/, executed on the CPU under emulation (tests/emu).

The emulated library torch.ops.hessalign_emu runs the ops through the same host drivers,
launchers and launch configurations as the GPU build, with the kernels executed by
cuda_cpu_emu.h; each result is compared with the CPU op (itself tested against the float64
reference). scripts/test.sh runs them under CUDAEMU_ORDER=scrambled, and a subset that runs
every kernel in float64 under forward and reverse, so that a missing __syncthreads changes a result.

Kernels covered: rows_kernel (every row functor of csrc/math/, head_hessian_inner's pair functors
among them), elements_kernel (RademacherFillOp, ProbeDiagAccumulateOp, ClassMajorSOp, ProbeClassFoldOp,
ProbeUpstreamOp), softmax_stats_kernel,
segment_sum_kernel, ce_coeffs_kernel, domain_stats_kernel (with and without the domain losses), loss_rows,
logits_hvp, and the HGP step's drivers (hgp_fused: ce_coeffs_kernel, ProbResidualOp and logits_hvp's).
The float16/bfloat16 kernels (float accumulation) run here too, through the same host drivers,
with the GEMMs in the 16-bit dtype on the CPU. Not emulated, covered only by the real CUDA tests
of scripts/gpu_check.sh on a GPU: the cuBLAS GEMMs (ATen runs them on the CPU here), streams and
device guards.
"""
import itertools
import sys
import pathlib

import pytest
import torch

import hessalign_ext  # noqa: F401  (the CPU ops the emulated kernels are compared with)
from conftest import confident_head

sys.path.insert(0, str(pathlib.Path(__file__).parent / "emu"))
import build as emu_build  # noqa: E402

pytestmark = pytest.mark.cuda_emulated

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-5)}


def assert_matches(actual, expected, dtype, msg=None):
    """float64: to rounding. float32: the warp-order sums of the kernels and the sequential CPU
    sums round differently, which cancellation can leave as a large error on a small element,
    so the absolute tolerance scales with the tensor's largest element."""
    tol = dict(TOL[dtype])
    if dtype == torch.float32 and expected.numel():
        tol["atol"] = max(tol["atol"], 1e-4 * expected.abs().max().item())
    torch.testing.assert_close(actual, expected, **tol, msg=msg)

# (domain sizes, C, d, bias): one-row and empty domains, N off the 8-rows-per-block launch
# grid, C and d off the warp width, a wide head, a domain longer than a block.
SHAPES = {
    "one_domain_one_row": ([1], 2, 1, True),
    "unequal_37x129": ([7, 1, 20, 0, 21], 37, 129, True),
    "no_bias_33x31": ([9, 16, 24], 33, 31, False),
    "wide_1000": ([5, 12], 1000, 3, True),
    # a domain of more rows than a block has threads: every warp of the per-domain block
    # reductions (segment_sum_kernel, ce_coeffs_kernel) holds a nonzero partial sum
    "long_domain_300": ([300, 7], 3, 2, True),
    # one tile, but a domain of more than 2^16 logits: the separate coefficient and
    # softmax-statistics kernels instead of domain_stats_kernel (CudaKernelsT::fuse_domain_stats)
    "past_fused_limit": ([300, 7], 250, 5, True),
    # a domain of more than 512 rows, few logits: the separate kernels too
    "past_fused_rows": ([600, 5], 2, 3, True),
    # more domains than travel inline in the launch arguments (math/domains.h): offsets on the device
    "many_domains_70": ([2, 0, 1] * 23 + [1], 3, 4, True),
}
OPS = ["domain_losses", "head_grad", "head_hvp", "head_hessian_diag", "head_hessian_trace", "head_hessian_inner",
       "hutchinson_diag", "hutchinson_trace"]
# (label_smoothing, class_weight, reduction, class_tile): plain, all options with class tiles.
OPTIONS = {"plain": (0.0, False, "mean", 0), "options_tiled": (0.1, True, "sum", 5)}


@pytest.fixture(scope="module", autouse=True)
def emulated_library():
    emu_build.load()


def _args(op, sizes, C, d, bias, dtype, options):
    g = torch.Generator().manual_seed(1234)
    N, E = sum(sizes), len(sizes)
    offsets = torch.tensor([0, *itertools.accumulate(sizes)])
    features = torch.randn(N, d, generator=g, dtype=dtype)
    weight = torch.randn(C, d, generator=g, dtype=dtype) / d**0.5
    b = torch.randn(C, generator=g, dtype=dtype) if bias else None
    labels = torch.randint(0, C, (N,), generator=g)
    labels[::4] = -100  # some ignored rows
    smoothing, weighted, reduction, tile = options
    cw = torch.rand(C, generator=g, dtype=dtype) + 0.5 if weighted else None
    ce = (-100, cw, smoothing, reduction, tile)
    D = d + bias
    head = (features, weight, b)
    if op in ("domain_losses", "head_grad"):
        return (*head, labels, offsets, *ce)
    if op == "head_hvp":
        return (*head, torch.randn(E, C, D, generator=g, dtype=dtype), offsets, labels, *ce)
    if op.startswith("hutchinson"):
        return (*head, offsets, 6, 11, labels, *ce)
    return (*head, offsets, labels, *ce)


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("op", OPS)
def test_emulated_kernels_match_cpu(op, shape, dtype, options):
    sizes, C, d, bias = shape
    args = _args(op, sizes, C, d, bias, dtype, options)
    cpu, emu = getattr(torch.ops.hessalign_ext, op), getattr(torch.ops.hessalign_emu, op)
    expected = cpu(*args)
    assert_matches(emu(*args), expected, dtype)
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(7), dtype=dtype)
    cpu_back = getattr(torch.ops.hessalign_ext, f"_{op}_backward")(grad, *args)
    emu_back = getattr(torch.ops.hessalign_emu, f"_{op}_backward")(grad, *args)
    for name, e, c in zip(["features", "weight", "bias", "vectors"], emu_back, cpu_back):
        assert_matches(e, c, dtype, msg=lambda m: f"{op} backward, {name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16],
                         ids=["f64", "f32", "bf16", "f16"])
@pytest.mark.parametrize("shape", ["one_domain_one_row", "unequal_37x129", "no_bias_33x31", "wide_1000"])
def test_emulated_logits_kernel(shape, dtype, monkeypatch):
    """A small head's logits by csrc/cuda/logits_kernels.cuh (16×16 tiles; these heads have rows,
    classes and columns off the tile edges) give the losses of the GEMM path
    (HESSALIGN_LOGITS_KERNEL=0), which the CPU ops give too; a value other than 0 or 1 raises."""
    sizes, C, d, bias = SHAPES[shape]
    args = _args("domain_losses", sizes, C, d, bias, torch.float64, OPTIONS["plain"])
    args = tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    emu = torch.ops.hessalign_emu.domain_losses
    own = emu(*args)
    monkeypatch.setenv("HESSALIGN_LOGITS_KERNEL", "0")
    gemm = emu(*args)
    check_dtype = torch.float32 if dtype in REDUCED else dtype
    expected = torch.ops.hessalign_ext.domain_losses(*(a.to(check_dtype) if isinstance(a, torch.Tensor)
                                                        and a.is_floating_point() else a for a in args))
    if dtype in REDUCED:  # both paths round the logits to 16 bits, each after its own float sums
        torch.testing.assert_close(own.float(), gemm.float(), rtol=REDUCED[dtype], atol=REDUCED[dtype])
        torch.testing.assert_close(own.float(), expected, rtol=REDUCED[dtype], atol=REDUCED[dtype])
    else:
        assert_matches(own, gemm, dtype)
        assert_matches(own, expected, dtype)
    monkeypatch.setenv("HESSALIGN_LOGITS_KERNEL", "yes")
    with pytest.raises(ValueError, match="HESSALIGN_LOGITS_KERNEL must be 0 \\(cuBLAS\\), 1 or unset"):
        emu(*args)


@pytest.mark.parametrize("op", ["hutchinson_diag", "hutchinson_trace"])
def test_emulated_probes_are_the_cpu_probes(op):
    """Same seed: the CUDA kernels draw the CPU's probes (results agree to rounding, while
    another seed gives a clearly different estimate)."""
    sizes, C, d, bias = SHAPES["unequal_37x129"]
    args = list(_args(op, sizes, C, d, bias, torch.float64, OPTIONS["plain"]))
    cpu, emu = getattr(torch.ops.hessalign_ext, op), getattr(torch.ops.hessalign_emu, op)
    torch.testing.assert_close(emu(*args), cpu(*args), rtol=1e-12, atol=1e-13)
    other = list(args)
    other[5] = 12  # seed
    assert (emu(*other) - cpu(*args)).abs().max() > 1e-3


@pytest.mark.parametrize("class_tile", [0, 5], ids=["one_tile", "tiles_of_5"])
@pytest.mark.parametrize("op", OPS)
def test_emulated_confident_rows_match_cpu(op, class_tile):
    """Rows that put nearly all their mass on one class (p̄ ≈ 1e-6, float32), every fifth row spread
    over the classes: the kernels' p̄ (softmax_stats_kernel's warp merges of the off-max mass, or
    domain_stats_kernel with one tile) and the forms centered on the dominant class
    (tile.h's Centered, head_hessian_inner.h's r = p - e_k) agree with the CPU ops, which
    tests/test_confident_rows.py holds to a 60-digit reference, to float32's relative precision:
    the plain forms are 1-100% off there."""
    sizes, C, d, bias = [7, 1, 20, 0, 21], 37, 12, True
    args = list(_args(op, sizes, C, d, bias, torch.float32, OPTIONS["plain"]))
    g = torch.Generator().manual_seed(9)
    N = sum(sizes)
    confident = torch.randint(0, C, (N,), generator=g)
    logits = torch.rand(N, C, generator=g) + 14.0 * torch.nn.functional.one_hot(confident, C)
    logits[::5] = torch.rand(N, C, generator=g)[::5]  # some rows without a dominant class
    z = torch.randn(N, d, generator=g, dtype=torch.float64)
    w = torch.linalg.lstsq(torch.cat([z, torch.ones(N, 1, dtype=torch.float64)], 1), logits.double()).solution.T
    args[0], args[1], args[2] = z.float(), w[:, :d].float().contiguous(), w[:, d].float().contiguous()
    # labels: the confident class, but for some rows another one (offsets are the other int64 tensor)
    at = next(i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.dtype == torch.int64 and len(a) == N)
    args[at] = confident.clone()
    args[at][3::7] = (confident[3::7] + 1) % C
    args[-1] = class_tile
    cpu, emu = getattr(torch.ops.hessalign_ext, op), getattr(torch.ops.hessalign_emu, op)

    def close(actual, expected, what):
        tol = 1e-4 * expected.abs().max().item()
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=tol, msg=lambda m: f"{op} {what}: {m}")

    expected = cpu(*args)
    close(emu(*args), expected, "forward")
    grad = torch.randn(expected.shape, generator=g)
    emu_back = getattr(torch.ops.hessalign_emu, f"_{op}_backward")(grad, *args)
    cpu_back = getattr(torch.ops.hessalign_ext, f"_{op}_backward")(grad, *args)
    for name, e, c in zip(["features", "weight", "bias", "vectors"], emu_back, cpu_back):
        close(e, c, f"backward, {name}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", ["unequal_37x129", "no_bias_33x31", "many_domains_70", "long_domain_300"])
def test_emulated_class_fold_matches_cpu(shape, dtype):
    """hutchinson_diag with more probes than a domain has rows folds by class: ClassMajorSOp,
    ProbeClassFoldOp and the class-major RademacherFillOp (the tests above use 6 probes)."""
    sizes, C, d, bias = SHAPES[shape]
    args = list(_args("hutchinson_diag", sizes, C, d, bias, dtype, OPTIONS["plain"]))
    args[4] = max(sizes) + 3  # num_probes
    expected = torch.ops.hessalign_ext.hutchinson_diag(*args)
    assert_matches(torch.ops.hessalign_emu.hutchinson_diag(*args), expected, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", ["unequal_37x129", "no_bias_33x31", "wide_1000"])
def test_emulated_one_probe_fold_matches_cpu(shape, dtype):
    """One probe: the by-domain fold's chunk holds one probe, and ProbeDiagAccumulateOp adds
    v ⊙ O_e / K straight into the output (math/hutchinson_diag.h's fold_rows with one row; the
    tests above use 6 probes, and the class fold's one-row domains)."""
    sizes, C, d, bias = SHAPES[shape]
    args = list(_args("hutchinson_diag", sizes, C, d, bias, dtype, OPTIONS["plain"]))
    args[4] = 1  # num_probes
    expected = torch.ops.hessalign_ext.hutchinson_diag(*args)
    assert_matches(torch.ops.hessalign_emu.hutchinson_diag(*args), expected, dtype)


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_emulated_loss_rows_match_cpu(shape, dtype, options):
    """loss_rows' coefficient and targets kernels (ce_coeffs_kernel, rows_kernel<TargetsRowOp>)."""
    sizes, C, d, bias = shape
    labels, offsets = _args("domain_losses", sizes, C, d, bias, dtype, options)[3:5]
    smoothing, weighted, reduction, _ = options
    cw = torch.rand(C, generator=torch.Generator().manual_seed(3), dtype=dtype) + 0.5 if weighted else None
    args = (labels, offsets, C, -100, cw, smoothing, reduction, dtype)
    for e, c in zip(torch.ops.hessalign_emu.loss_rows(*args), torch.ops.hessalign_ext.loss_rows(*args)):
        assert_matches(e, c, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("N, C, B", [(1, 1, 1), (37, 33, 3), (9, 1000, 2), (300, 2, 1)],
                         ids=["one_row", "off_warp_37x33x3", "wide_1000", "many_rows_300"])
def test_emulated_logits_hvp_matches_cpu(N, C, B, dtype):
    """logits_hvp's row kernels (rows_kernel<LogitsHvpOp>, a warp per vector of a row, and the
    backward's LogitsHvpBackwardUOp and LogitsHvpBackwardPOp), with either upstream gradient absent."""
    g = torch.Generator().manual_seed(N + C)
    probs = torch.softmax(torch.randn(N, C, generator=g, dtype=dtype), 1)
    args = (probs, torch.rand(N, generator=g, dtype=dtype) + 0.1, torch.randn(N, B * C, generator=g, dtype=dtype))
    for e, c in zip(torch.ops.hessalign_emu.logits_hvp(*args), torch.ops.hessalign_ext.logits_hvp(*args)):
        assert_matches(e, c, dtype)
    s, m = torch.ops.hessalign_ext.logits_hvp(*args)
    grad_s, grad_m = torch.randn(s.shape, generator=g, dtype=dtype), torch.randn(m.shape, generator=g, dtype=dtype)
    for grads in ((grad_s, grad_m), (grad_s, None), (None, grad_m)):
        back = (*grads, *args, m)
        for e, c in zip(torch.ops.hessalign_emu._logits_hvp_backward(*back),
                        torch.ops.hessalign_ext._logits_hvp_backward(*back)):
            assert_matches(e, c, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_emulated_hgp_fused_matches_cpu(shape, dtype):
    """The HGP step's forward and backward drivers (host/hgp_fused.h) with the CUDA backend's
    loss coefficients, residual (ProbResidualOp) and logits_hvp kernels: value, per-domain terms,
    saved tensors and gradients."""
    sizes, C, d, bias = shape
    features, weight, b, labels, offsets = _args("head_grad", sizes, C, d, bias, dtype, OPTIONS["plain"])[:5]
    args = (features, weight, b, labels, offsets.tolist(), 0.7, 0.3, True, -100, None, 0.1, "mean")
    emu, cpu = torch.ops.hessalign_emu.hgp_fused(*args), torch.ops.hessalign_ext.hgp_fused(*args)
    for e, c in zip([*emu[:3], *emu[3]], [*cpu[:3], *cpu[3]]):
        assert_matches(e, c, dtype)
    back = (torch.tensor(1.3, dtype=dtype), features, weight, b, offsets.tolist(), 0.7, 0.3, cpu[3], [True] * 3)
    for e, c in zip(torch.ops.hessalign_emu._hgp_fused_backward(*back),
                    torch.ops.hessalign_ext._hgp_fused_backward(*back)):
        assert_matches(e, c, dtype)


def test_emulated_hgp_fused_at_confident_rows():
    """The HGP step's kernels at confident rows (p̄ ≈ 1e-5, float32; every fourth row labelled at
    random, mostly not its dominant class): ProbResidualOp's p̄ = Σ' p and residual, and
    logits_hvp's products centered on it, emulated, agree with the CPU step, which
    tests/test_confident_rows.py holds to float64, to float32's precision (forward, saved tensors
    and gradients); logits_hvp alone too (p̄ = 1 − p_k), forward and backward."""
    sizes, C, d = [7, 9, 8], 37, 40
    N = sum(sizes)
    g = torch.Generator().manual_seed(11)
    classes = torch.randint(0, C, (N,), generator=g)
    z, w, b, g = confident_head(classes, 14.0, d, C, seed=11)
    z, w, b = z.float(), w.float(), b.float()
    labels = classes.clone()
    labels[::4] = torch.randint(0, C, (N,), generator=g)[::4]
    args = (z, w, b, labels, [0, 7, 16, 24], 0.7, 0.3, True, -100, None, 0.0, "mean")
    emu, cpu = torch.ops.hessalign_emu.hgp_fused(*args), torch.ops.hessalign_ext.hgp_fused(*args)
    for e, c in zip([*emu[:3], *emu[3]], [*cpu[:3], *cpu[3]]):
        assert_matches(e, c, torch.float32)
    back = (torch.tensor(1.3), z, w, b, [0, 7, 16, 24], 0.7, 0.3, cpu[3], [True] * 3)
    for e, c in zip(torch.ops.hessalign_emu._hgp_fused_backward(*back),
                    torch.ops.hessalign_ext._hgp_fused_backward(*back)):
        assert_matches(e, c, torch.float32)
    probs, coef = cpu[3][1], cpu[3][0]
    hvp_args = (probs, coef, torch.randn(N, 2 * C, generator=g))
    for e, c in zip(torch.ops.hessalign_emu.logits_hvp(*hvp_args), torch.ops.hessalign_ext.logits_hvp(*hvp_args)):
        assert_matches(e, c, torch.float32)
    s, m = torch.ops.hessalign_ext.logits_hvp(*hvp_args)
    back = (torch.randn(s.shape, generator=g), torch.randn(m.shape, generator=g), *hvp_args, m)
    for e, c in zip(torch.ops.hessalign_emu._logits_hvp_backward(*back),
                    torch.ops.hessalign_ext._logits_hvp_backward(*back)):
        assert_matches(e, c, torch.float32)


# float16/bfloat16: inputs rounded to the dtype, compared with the CPU op in float64 on the same
# values, the error relative to the result's largest element. The logits are rounded to the dtype
# (as in plain torch), and gradients that cancel amplify that: the trace gradients here reach
# 4.0e-2 in bfloat16 and 2.2e-3 in float16 (plain-torch bfloat16 autograd of the trace on such
# heads: 0.4-2.2e-2). A wrong kernel is off by O(1).
REDUCED = {torch.bfloat16: 6e-2, torch.float16: 6e-3}


def _rounded(args, dtype):
    """(args in dtype, the same values in float64)."""
    low = tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    return low, tuple(a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in low)


def _assert_reduced(actual, expected, dtype, what):
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}"
    err = (actual.double() - expected).abs().max().item() if expected.numel() else 0.0
    scale = expected.abs().max().item() if expected.numel() else 0.0
    assert err <= REDUCED[dtype] * max(scale, 1e-6), f"{what}: max error {err:.3g} against max |x| {scale:.3g}"


def _check_reduced_op(op, args, dtype):
    """The emulated op and its backward in dtype against the CPU op and backward in float64 on the
    same values."""
    low, ref_args = _rounded(args, dtype)
    expected = getattr(torch.ops.hessalign_ext, op)(*ref_args)
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(7)).to(dtype)
    _assert_reduced(getattr(torch.ops.hessalign_emu, op)(*low), expected, dtype, op)
    back = getattr(torch.ops.hessalign_emu, f"_{op}_backward")(grad, *low)
    ref_back = getattr(torch.ops.hessalign_ext, f"_{op}_backward")(grad.double(), *ref_args)
    for name, g, ref in zip(["features", "weight", "bias", "vectors"], back, ref_back):
        _assert_reduced(g, ref, dtype, f"{op} backward, {name}")


@pytest.mark.parametrize("dtype", list(REDUCED), ids=["bf16", "f16"])
@pytest.mark.parametrize("shape", ["unequal_37x129", "no_bias_33x31", "wide_1000", "past_fused_rows"])
@pytest.mark.parametrize("op", OPS)
def test_emulated_reduced_precision_kernels(op, shape, dtype):
    """Every op's float16/bfloat16 kernels, forward and backward, with every loss option and class
    tiles (the fused statistics kernel, and past_fused_rows the separate ones)."""
    sizes, C, d, bias = SHAPES[shape]
    _check_reduced_op(op, _args(op, sizes, C, d, bias, torch.float64, OPTIONS["options_tiled"]), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=["f64", "bf16"])
@pytest.mark.parametrize("shape", ["unequal_37x129", "no_bias_33x31"])
def test_emulated_hvp_with_shared_vectors(shape, dtype):
    """head_hvp with one (C, D) block for every domain, forward and backward (whose gradient for it
    is one GEMM over all rows into a float32 accumulator), against the CPU."""
    sizes, C, d, bias = SHAPES[shape]
    args = list(_args("head_hvp", sizes, C, d, bias, torch.float64, OPTIONS["options_tiled"]))
    args[3] = args[3][0]
    if dtype == torch.bfloat16:
        return _check_reduced_op("head_hvp", tuple(args), dtype)
    expected = torch.ops.hessalign_ext.head_hvp(*args)
    assert_matches(torch.ops.hessalign_emu.head_hvp(*args), expected, dtype)
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(7), dtype=dtype)
    emu_back = torch.ops.hessalign_emu._head_hvp_backward(grad, *args)
    cpu_back = torch.ops.hessalign_ext._head_hvp_backward(grad, *args)
    for name, e, c in zip(["features", "weight", "bias", "vectors"], emu_back, cpu_back):
        assert_matches(e, c, dtype, msg=lambda m: f"head_hvp backward, {name}: {m}")


# HESSALIGN_ALIGN_ROWS=1 (host/padded_width.h): every D-wide GEMM operand padded to 16 bytes. In
# bfloat16 the float32 gradient accumulators must take their bfloat16 operands' padded width: at
# D = 4 (wide_1000) float32 rows need no padding and bfloat16 rows pad to 8, at D = 130
# (unequal_37x129) they pad to 132 and 136. An H100 run found every op's backward failing there.
# "staged": tiles by the memory rule under a budget that stages the caller's blocks and the results
# 16 rows at a time (Head::stage_rows).
@pytest.mark.parametrize("staged", [False, True], ids=["tiles_of_5", "staged"])
@pytest.mark.parametrize("shape", ["wide_1000", "unequal_37x129"])
@pytest.mark.parametrize("op", OPS)
def test_emulated_aligned_rows_bfloat16(op, shape, staged, monkeypatch):
    sizes, C, d, bias = SHAPES[shape]
    monkeypatch.setenv("HESSALIGN_ALIGN_ROWS", "1")
    options = OPTIONS["options_tiled"]
    if staged:
        monkeypatch.setenv("HESSALIGN_TILE_BYTES", "600")
        options = (*options[:3], 0)
    _check_reduced_op(op, _args(op, sizes, C, d, bias, torch.float64, options), torch.bfloat16)


@pytest.mark.parametrize("dtype", list(REDUCED), ids=["bf16", "f16"])
@pytest.mark.parametrize("shape", ["unequal_37x129", "no_bias_33x31", "wide_1000", "past_fused_rows"])
def test_emulated_reduced_precision_hgp_fused(shape, dtype):
    """The HGP step in float16/bfloat16 (host/hgp_fused.h runs it in the features' dtype):
    value, per-domain terms and gradients against float64 on the same values."""
    sizes, C, d, bias = SHAPES[shape]
    features, weight, b, labels, offsets = _args("head_grad", sizes, C, d, bias, torch.float64, OPTIONS["plain"])[:5]
    (low, ref), off = _rounded((features, weight, b), dtype), offsets.tolist()

    def run(lib, head, grad):
        out = lib.hgp_fused(*head, labels, off, 0.7, 0.3, True, -100, None, 0.1, "mean")
        return out[:3], lib._hgp_fused_backward(grad, *head, off, 0.7, 0.3, out[3], [True, True, bias])

    grad = torch.tensor(1.3).to(dtype)
    (emu, emu_back), (cpu, cpu_back) = (run(torch.ops.hessalign_emu, low, grad),
                                        run(torch.ops.hessalign_ext, ref, grad.double()))
    for name, e, c in zip(["penalty", "hess_terms", "grad_terms", "features", "weight", "bias"],
                          [*emu, *emu_back], [*cpu, *cpu_back]):
        _assert_reduced(e, c, dtype, f"hgp_fused {name}")
