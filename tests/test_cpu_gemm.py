"""The CPU GEMM ways (csrc/host/gemm.h, csrc/cpu/onednn_gemm.cpp, csrc/cpu/gemm_tuner.cpp and the
few-rows and few-classes kernels): every op, forward and backward, with its float32 GEMMs on
oneDNN, on ATen, on this project's kernels and in auto mode (HESSALIGN_CPU_GEMM), against the
float64 reference; and auto mode's measured choice among them."""

import re

import pytest
import torch

import hessalign_ext
from hessalign_ext import reference
from conftest import SHAPE, Shape, assert_close, aten_calls, check_backward, make_problem

OPS = ["domain_losses", "head_grad", "head_hvp", "head_hessian_diag", "head_hessian_trace",
       "head_hessian_inner", "hutchinson_diag", "hutchinson_trace"]

# oneDNN and the few-rows kernel are ways here where the CPU and the build have them (3.2M
# multiply-adds in the logits GEMM, domains of 32 rows); the few-classes kernel at C <= 32.
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
needs_own = pytest.mark.skipif(hessalign_ext._C.cpu_isa != "avx2",
                               reason="a portable build does not take the few-rows and few-classes kernels")
needs_a_choice = pytest.mark.skipif(not onednn_runs() and hessalign_ext._C.cpu_isa != "avx2",
                                    reason="every product has one way here, ATen's")
MODES = [pytest.param("onednn", marks=needs_onednn), "aten", pytest.param("own", marks=needs_own), "auto"]


@pytest.fixture(autouse=True)
def timing_on():
    """Auto mode times the ways here (an in-process training run turns timing off)."""
    hessalign_ext._C.set_cpu_gemm_timing(True)


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


@pytest.mark.parametrize("variable,value,fragment", [
    ("HESSALIGN_CPU_GEMM", "mkl", "HESSALIGN_CPU_GEMM must be auto, aten, onednn or own (or unset); got 'mkl'"),
    ("HESSALIGN_ALIGN_ROWS", "yes", "HESSALIGN_ALIGN_ROWS must be 1 (on), 0 (off) or unset (the size rule); got 'yes'"),
])
def test_a_misspelt_setting_raises(variable, value, fragment, monkeypatch):
    """An environment setting the ops do not know raises ValueError naming it, instead of being
    taken as the default; "auto" (and the empty string) is the default."""
    p = make_problem(LARGE, torch.float32)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=re.escape(fragment)):
        call(hessalign_ext, "head_grad", p)
    monkeypatch.setenv("HESSALIGN_CPU_GEMM", "auto")
    monkeypatch.setenv("HESSALIGN_ALIGN_ROWS", "")
    assert_close(call(hessalign_ext, "head_grad", p), truth("head_grad", p), torch.float32)


def run_in(mode, monkeypatch, op, p):
    set_mode(monkeypatch, mode)
    return call(hessalign_ext, op, p)


def gemm_calls(mode, monkeypatch, op, p, names) -> int:
    """The op's calls to the ATen ops named, in a mode."""
    set_mode(monkeypatch, mode)
    return aten_calls(lambda: call(hessalign_ext, op, p), *names)


def choices() -> dict:
    return {c["key"]: c for c in hessalign_ext._C.cpu_gemm_choices()}


@needs_a_choice
@pytest.mark.parametrize("op", OPS)
def test_auto_times_each_product_once_and_keeps_the_fastest(op, monkeypatch):
    """At its first call each kind of float32 product is timed on every way that applies and
    takes the fastest; later calls take the same way untimed, and give the same bits."""
    set_mode(monkeypatch, "auto")
    hessalign_ext._C.clear_cpu_gemm_choices()
    p = make_problem(LARGE, torch.float32)
    first = call(hessalign_ext, op, p)
    measured = choices()
    assert any(len(c["ways"]) > 1 for c in measured.values())
    for c in measured.values():
        assert c["threads"] == torch.get_num_threads() and c["calls"] >= 1
        if len(c["ways"]) == 1:
            assert c["seconds"] == (None,) and c["chosen"] == c["ways"][0]
            continue
        assert all(s > 0 for s in c["seconds"])
        assert c["chosen"] == min(zip(c["seconds"], c["ways"]))[1]
    assert torch.equal(call(hessalign_ext, op, p), first)
    later = choices()
    assert later.keys() == measured.keys()
    for key, c in later.items():
        assert (c["seconds"], c["chosen"]) == (measured[key]["seconds"], measured[key]["chosen"])
    # a product inside a way not chosen (the GEMMs of a per-domain product on the few-rows
    # kernel) is not called again
    assert sum(c["calls"] - measured[key]["calls"] for key, c in later.items()) > 0


ATEN_GEMMS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::addmm_", "aten::baddbmm", "aten::baddbmm_")


@needs_a_choice
@pytest.mark.parametrize("op", ["domain_losses", "head_grad", "head_hvp", "head_hessian_diag", "hutchinson_trace"])
def test_auto_runs_the_way_it_chose(op, monkeypatch):
    """Once measured, an op's ATen GEMMs (the profiler's count) are exactly the calls of the
    products that chose ATen: no product that chose oneDNN or a kernel of ours ran on ATen."""
    set_mode(monkeypatch, "auto")
    hessalign_ext._C.clear_cpu_gemm_choices()
    p = make_problem(LARGE, torch.float32)
    call(hessalign_ext, op, p)
    before = choices()
    ran_on_aten = aten_calls(lambda: call(hessalign_ext, op, p), *ATEN_GEMMS)
    after = choices()
    assert after.keys() == before.keys()
    calls = {key: c["calls"] - before[key]["calls"] for key, c in after.items()}
    assert sum(calls.values()) > 0
    assert ran_on_aten == sum(n for key, n in calls.items() if after[key]["kind"] == "gemm"
                              and after[key]["chosen"] == "aten")


def test_each_thread_count_has_its_own_choices(monkeypatch):
    set_mode(monkeypatch, "auto")
    hessalign_ext._C.clear_cpu_gemm_choices()
    p = make_problem(LARGE, torch.float32)
    threads = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            call(hessalign_ext, "head_grad", p)
    finally:
        torch.set_num_threads(threads)
    assert {c["threads"] for c in choices().values()} == {1, 2}


@needs_onednn
def test_products_too_large_to_time_take_onednn(monkeypatch):
    """A product of more than 2^30 multiply-adds is not timed (runs of it take seconds): it takes
    oneDNN where that applies, the faster at large sizes on the CPUs measured."""
    set_mode(monkeypatch, "auto")
    hessalign_ext._C.clear_cpu_gemm_choices()
    p = make_problem(Shape("huge_logits", (512, 512), C=1025, d=1024), torch.float32)  # 2^30 + 2^20
    call(hessalign_ext, "domain_losses", p)
    untimed = [c for c in choices().values() if len(c["ways"]) > 1 and c["seconds"][0] is None]
    assert untimed and all(c["chosen"] == "onednn" and "onednn" in c["ways"] for c in untimed)


@needs_a_choice
def test_untimed_choices_with_timing_off(monkeypatch):
    """With timing off (the trainer's setting) every product takes its untimed way, recorded
    apart from timed choices: oneDNN where it applies, else the few-classes kernel, else ATen; for
    per-domain products, the GEMMs where oneDNN runs, else the few-rows kernel."""
    set_mode(monkeypatch, "auto")
    hessalign_ext._C.clear_cpu_gemm_choices()
    p = make_problem(LARGE, torch.float32)
    hessalign_ext._C.set_cpu_gemm_timing(False)
    untimed = call(hessalign_ext, "head_hvp", p)
    listed = choices().values()
    assert listed and all(not c["timed"] and c["seconds"] == (None,) * len(c["ways"]) for c in listed)
    for c in listed:
        if c["kind"] == "segment":
            assert c["chosen"] == ("gemms" if onednn_runs() else "few_rows")
        else:
            assert c["chosen"] == next(w for w in ("onednn", "few_classes", "aten") if w in c["ways"])
    hessalign_ext._C.set_cpu_gemm_timing(True)
    call(hessalign_ext, "head_hvp", p)
    assert any(c["timed"] for c in choices().values())
    hessalign_ext._C.set_cpu_gemm_timing(False)
    assert torch.equal(call(hessalign_ext, "head_hvp", p), untimed)


def test_float32_only(monkeypatch):
    """Auto mode chooses among ways for float32 products only: float64 ones are ATen's, unlisted,
    and the same bits in every mode."""
    set_mode(monkeypatch, "auto")
    hessalign_ext._C.clear_cpu_gemm_choices()
    p = make_problem(LARGE, torch.float64)
    on_auto = call(hessalign_ext, "head_hvp", p)
    assert choices() == {}
    assert torch.equal(run_in("aten", monkeypatch, "head_hvp", p), on_auto)
    if onednn_runs():
        assert torch.equal(run_in("onednn", monkeypatch, "head_hvp", p), on_auto)


def ways_listed(op, shape, dtype, monkeypatch) -> set:
    """The ways auto mode lists for the op's products at a head (kind, way)."""
    set_mode(monkeypatch, "auto")
    hessalign_ext._C.clear_cpu_gemm_choices()
    call(hessalign_ext, op, make_problem(shape, dtype))
    return {(c["kind"], w) for c in choices().values() for w in c["ways"]}


@needs_own
@pytest.mark.parametrize("op", ["head_grad", "head_hvp", "head_hessian_diag"])
def test_the_few_rows_kernel_is_a_way_up_to_64_rows(op, monkeypatch):
    """Auto mode times the few-rows kernel against GEMMs for X_eᵀ Y_e over float32 domains of up to
    64 rows; past 64 rows it is not a way."""
    assert ("segment", "few_rows") in ways_listed(op, LARGE, torch.float32, monkeypatch)
    assert ("segment", "few_rows") not in ways_listed(op, Shape("rows_65", (65, 65), C=40, d=40), torch.float32,
                                                      monkeypatch)


@needs_own
@pytest.mark.parametrize("op", ["domain_losses", "head_grad", "head_hvp", "head_hessian_diag"])
def test_the_few_classes_kernel_is_a_way_up_to_32_classes(op, monkeypatch):
    """Auto mode times the few-classes kernel against the other ways for the logits Z Wᵀ (and the
    HVP's Z̃ Vᵀ) of float32 heads of up to 32 classes; at 33 classes it is not a way."""
    for C, listed in ((32, True), (33, False)):
        shape = Shape(f"rows_65_C{C}", (65, 65), C=C, d=40)
        assert (("gemm", "few_classes") in ways_listed(op, shape, torch.float32, monkeypatch)) == listed, C


@needs_own
@pytest.mark.parametrize("op", ["head_grad", "head_hvp", "head_hessian_diag"])
def test_own_mode_takes_our_kernels_where_they_apply(op, monkeypatch):
    """HESSALIGN_CPU_GEMM=own: the per-domain products of domains of up to 64 rows and the
    products of up to 32 classes run on this project's kernels, untimed: fewer ATen GEMMs than in
    aten mode, and nothing listed."""
    p = make_problem(Shape("rows_32_C32", (32, 32, 32), C=32, d=40), torch.float32)
    hessalign_ext._C.clear_cpu_gemm_choices()
    own = gemm_calls("own", monkeypatch, op, p, ATEN_GEMMS)
    assert own < gemm_calls("aten", monkeypatch, op, p, ATEN_GEMMS) and choices() == {}
