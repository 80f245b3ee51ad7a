"""The CPU GEMM backends (csrc/host/gemm.h, csrc/cpu/onednn_gemm.cpp, csrc/cpu/segment_tn_cpu.cpp):
every op, forward and backward, with its float32 GEMMs on oneDNN, on ATen and in auto mode
(HESSALIGN_CPU_GEMM; auto takes the few-rows kernel for per-domain products on CPUs without
oneDNN), against the float64 reference; and auto mode's choice between them."""

import pytest
import torch

import hessalign_ext
from hessalign_ext import reference
from conftest import SHAPE, Shape, assert_close, aten_calls, check_backward, make_problem

OPS = ["domain_losses", "head_grad", "head_hvp", "head_hessian_diag", "head_hessian_trace",
       "head_hessian_inner", "hutchinson_diag", "hutchinson_trace"]

# Above the 2^20 multiply-adds from which auto mode takes oneDNN (3.2M in the logits GEMM).
LARGE = Shape("large", (32, 32, 32), C=65, d=512)
# GEMM layouts oneDNN does not read in place (a copy first, or ATen in auto mode), one row
# (a broadcast bias that must not be written), unequal and empty domains, no bias.
SHAPES = [LARGE, Shape("large_unequal", (40, 0, 25), C=65, d=256), SHAPE["tiny"], SHAPE["unequal"],
          SHAPE["empty_domain"], SHAPE["no_bias"], SHAPE["noncontiguous"]]


def onednn_runs() -> bool:
    """Whether oneDNN's float32 matmul runs here (mode "onednn" raises where it cannot)."""
    p = make_problem(SHAPE["tiny"], torch.float32)
    mp = pytest.MonkeyPatch()
    mp.setenv("HESSALIGN_CPU_GEMM", "onednn")
    try:
        hessalign_ext.head_grad(*p.head(), p.labels, p.offsets)
        return True
    except RuntimeError as err:
        assert "HESSALIGN_CPU_GEMM=onednn" in str(err)
        return False
    finally:
        mp.undo()


needs_onednn = pytest.mark.skipif(not onednn_runs(), reason="oneDNN's float32 matmul does not run on this CPU")
MODES = [pytest.param("onednn", marks=needs_onednn), "aten", "auto"]


def set_mode(monkeypatch, mode):
    if mode in (None, "auto"):
        monkeypatch.delenv("HESSALIGN_CPU_GEMM", raising=False)
    else:
        monkeypatch.setenv("HESSALIGN_CPU_GEMM", mode)


# Ops whose reference forms C·D HVPs or whole Hessians: too large at LARGE (C·D = 33345).
EXACT = ("head_hessian_diag", "head_hessian_trace", "head_hessian_inner")


def call(impl, op, p, cast=lambda t: t, **opts):
    head = [None if t is None else cast(t) for t in p.head()]
    if op in ("domain_losses", "head_grad"):
        return getattr(impl, op)(*head, p.labels, p.offsets, **opts)
    if op == "head_hvp":
        return impl.head_hvp(*head, cast(p.vectors), p.offsets, **opts)
    if op.startswith("hutchinson"):
        return getattr(impl, op)(*head, p.offsets, 4, 11, **opts)
    return getattr(impl, op)(*head, p.offsets, **opts)


def truth(op, p):
    """The float64 reference; for an exact op at a large head, our float64 op (its GEMMs are
    ATen's in every mode; tests/test_<op>.py hold it to the reference) on the same inputs."""
    if op in EXACT and p.shape.N * p.shape.C * p.shape.D > 10**5:
        return call(hessalign_ext, op, p, cast=torch.Tensor.double)
    return call(reference, op, p)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=[s.id for s in SHAPES])
@pytest.mark.parametrize("op", OPS)
def test_op_on_each_backend(op, shape, mode, monkeypatch):
    set_mode(monkeypatch, mode)
    p = make_problem(shape, torch.float32, requires_grad=True)
    bias = None if p.bias is None else p.bias.detach().clone()
    out = call(hessalign_ext, op, p)
    assert_close(out, truth(op, p), torch.float32, shape.id)
    if bias is not None:
        assert torch.equal(p.bias.detach(), bias), "a GEMM wrote into the bias"
    if op == "domain_losses":
        return
    inputs = [t for t in (p.features, p.weight, p.bias, p.vectors if op == "head_hvp" else None) if t is not None]
    # head_hessian_inner's weight and bias gradients reach ~60 at LARGE: an absolute floor of
    # 1e-5 is below the float32 rounding of such sums (1e-6 of their norm on either backend)
    grad_tol = dict(rtol=1e-3, atol=1e-3) if op == "head_hessian_inner" and shape.C > 10 else None
    check_backward(lambda: call(hessalign_ext, op, p), lambda: truth(op, p), p, inputs, grad_tol=grad_tol)


@pytest.mark.parametrize("mode", MODES)
def test_class_tiles_on_each_backend(mode, monkeypatch):
    """With class tiles the per-domain GEMMs read narrowed (E, T, D) blocks."""
    set_mode(monkeypatch, mode)
    p = make_problem(LARGE, torch.float32)
    for op in ("head_grad", "head_hvp", "head_hessian_diag", "hutchinson_diag"):
        assert_close(call(hessalign_ext, op, p, class_tile=16), truth(op, p), torch.float32)


@pytest.mark.parametrize("mode", MODES)
def test_padded_rows_on_each_backend(mode, monkeypatch):
    """HESSALIGN_ALIGN_ROWS=1: GEMM operands with padded row strides."""
    set_mode(monkeypatch, mode)
    monkeypatch.setenv("HESSALIGN_ALIGN_ROWS", "1")
    p = make_problem(LARGE, torch.float32)
    for op in ("head_grad", "head_hvp", "hutchinson_trace"):
        assert_close(call(hessalign_ext, op, p), call(reference, op, p), torch.float32)


def run_in(mode, monkeypatch, op, p):
    set_mode(monkeypatch, mode)
    return call(hessalign_ext, op, p)


@needs_onednn
@pytest.mark.parametrize("op", ["head_grad", "head_hvp"])
def test_auto_takes_onednn_for_large_gemms_only(op, monkeypatch):
    """The two backends round differently (inner dimension 513), so bitwise equality shows
    which one ran: auto runs oneDNN when every GEMM of the op is large, ATen when none is."""
    large = make_problem(LARGE, torch.float32)
    on_onednn, on_aten = run_in("onednn", monkeypatch, op, large), run_in("aten", monkeypatch, op, large)
    assert not torch.equal(on_onednn, on_aten)
    assert torch.equal(run_in(None, monkeypatch, op, large), on_onednn)
    small = make_problem(SHAPE["domainbed"], torch.float32)
    assert torch.equal(run_in(None, monkeypatch, op, small), run_in("aten", monkeypatch, op, small))


def test_float64_stays_on_aten(monkeypatch):
    """oneDNN takes float32 only: float64 is the same bits in every mode."""
    p = make_problem(LARGE, torch.float64)
    assert torch.equal(run_in("onednn", monkeypatch, "head_hvp", p), run_in("aten", monkeypatch, "head_hvp", p))


def gemm_calls(mode, monkeypatch, op, p, names=("aten::mm", "aten::addmm", "aten::bmm")) -> int:
    """The op's calls to ATen's GEMMs in a mode: plain, with a bias and batched, or those named."""
    set_mode(monkeypatch, mode)
    return aten_calls(lambda: call(hessalign_ext, op, p), *names)


@pytest.mark.skipif(onednn_runs(), reason="where oneDNN runs, auto mode keeps float32 products on its rule")
@pytest.mark.skipif(hessalign_ext._C.cpu_isa != "avx2", reason="a portable build does not take the few-rows kernel")
@pytest.mark.parametrize("op", ["head_grad", "head_hvp", "head_hessian_diag"])
def test_auto_takes_the_few_rows_kernel_up_to_64_rows(op, monkeypatch):
    """Auto mode computes X_eᵀ Y_e with the few-rows kernel for float32 domains of up to 64 rows:
    one batched ATen GEMM fewer than in aten mode (the kernel and BLAS round alike here, so the
    bits cannot tell); past 64 rows, and in float64, the same GEMMs as aten mode."""
    for shape, dtype, fewer in ((LARGE, torch.float32, 1), (Shape("rows_65", (65, 65), C=40, d=40), torch.float32, 0),
                                (LARGE, torch.float64, 0)):
        p = make_problem(shape, dtype)
        bmm = ("aten::bmm",)  # the per-domain products of equal domains
        assert gemm_calls("aten", monkeypatch, op, p, bmm) - gemm_calls(None, monkeypatch, op, p, bmm) == fewer, \
            (shape.id, dtype)


@pytest.mark.skipif(onednn_runs(), reason="where oneDNN runs, auto mode keeps float32 products on its rule")
@pytest.mark.skipif(hessalign_ext._C.cpu_isa != "avx2", reason="a portable build does not take the few-classes kernel")
@pytest.mark.parametrize("op", ["domain_losses", "head_grad", "head_hvp", "head_hessian_diag"])
def test_auto_takes_the_few_classes_kernel_up_to_32_classes(op, monkeypatch):
    """Auto mode computes the logits Z Wᵀ (and the HVP's Z̃ Vᵀ) with the few-classes kernel for
    float32 heads of up to 32 classes: fewer ATen GEMMs than aten mode; at 33 classes, and in
    float64, the same GEMMs (domains of 65 rows, past the few-rows kernel)."""
    for C, dtype, fewer in ((32, torch.float32, True), (33, torch.float32, False), (32, torch.float64, False)):
        p = make_problem(Shape(f"rows_65_C{C}", (65, 65), C=C, d=40), dtype)
        auto, aten = gemm_calls(None, monkeypatch, op, p), gemm_calls("aten", monkeypatch, op, p)
        assert (auto < aten) if fewer else (auto == aten), (C, dtype, auto, aten)
