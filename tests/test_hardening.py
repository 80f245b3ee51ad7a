"""Ops under hostile use: extreme values, expanded (stride-0) inputs, NaN/Inf policy,
repeated calls (no memory growth) and concurrent calls from several threads."""
import threading

import pytest
import torch

import hessalign_ext
from hessalign_ext import reference
from conftest import SHAPE, Shape, assert_close, make_problem

OPS = ["domain_losses", "head_grad", "head_hvp", "head_hessian_diag", "head_hessian_trace", "head_hessian_inner",
       "hutchinson_diag", "hutchinson_trace"]


def call(impl, op, p, features=None, weight=None, **opts):
    head = (p.features if features is None else features, p.weight if weight is None else weight, p.bias)
    f = getattr(impl, op)
    if op in ("domain_losses", "head_grad"):
        return f(*head, p.labels, p.offsets, **opts)
    if op == "head_hvp":
        return f(*head, p.vectors, p.offsets, labels=p.labels, **opts)
    if op.startswith("hutchinson"):
        return f(*head, p.offsets, 4, 9, labels=p.labels, **opts)
    return f(*head, p.offsets, labels=p.labels, **opts)


def _extreme(kind):
    p = make_problem(Shape(kind, (4, 1, 3), C=2 if kind == "two_classes" else 6, d=5), seed=11)
    with torch.no_grad():
        if kind == "huge_features":
            p.features.mul_(1e2)  # logits ~ ±1e2: most probabilities near 0 or 1
        elif kind == "saturated":
            p.features.mul_(1e3)  # logits ~ ±1e3: every row one-hot to float64 precision
        elif kind == "tiny_features":
            p.features.mul_(1e-6)
        elif kind == "dominant_class":
            p.bias[0] += 60.0  # p_0 = 1 - O(e^-60): the other probabilities underflow relative to it
        elif kind == "logits_1e4":
            p.bias.mul_(1e4)
    return p


@pytest.mark.parametrize("kind", ["huge_features", "tiny_features", "dominant_class", "two_classes", "logits_1e4"])
@pytest.mark.parametrize("op", OPS)
def test_extreme_values_are_finite_and_exact(op, kind):
    p = _extreme(kind)
    out = call(hessalign_ext, op, p)
    assert torch.isfinite(out).all()
    ref = call(reference, op, p)
    # With p ≈ 1, p(1-p) comes from 1-p (here and in autograd alike): a cancellation whose
    # rounding, scaled by ‖z̃‖² ≈ 1e4, is resolved relative to the output's largest entry.
    scale = max(1.0, ref.abs().max().item())
    assert_close(out, ref, atol=(1e-10 if kind == "huge_features" else 1e-12) * scale)


@pytest.mark.parametrize("op", OPS)
def test_saturated_softmax_stays_finite(op):
    """At logits ~ ±1e3 every curvature entry is below float64 rounding of p(1-p) (the float64
    truth itself is not resolved there): the ops give finite values, and a non-negative
    exact diagonal and trace."""
    p = _extreme("saturated")
    out = call(hessalign_ext, op, p)
    assert torch.isfinite(out).all()
    if op in ("head_hessian_diag", "head_hessian_trace"):
        assert (out >= 0).all()


@pytest.mark.parametrize("op", OPS)
def test_expanded_and_strided_inputs(op):
    """Stride-0 (expanded) and transposed views are copied once and give the contiguous result."""
    p = make_problem(SHAPE["unequal"])
    row = torch.randn(1, p.shape.d, dtype=torch.float64)
    expanded = row.expand(p.shape.N, p.shape.d)
    weight_t = p.weight.T.contiguous().T  # same values, column-major
    assert expanded.stride(0) == 0 and not weight_t.is_contiguous()
    assert_close(call(hessalign_ext, op, p, features=expanded, weight=weight_t),
                 call(hessalign_ext, op, p, features=expanded.contiguous()))


@pytest.mark.parametrize("op", [op for op in OPS if op != "head_hessian_inner"])
def test_nan_propagates_to_its_domain_only(op):
    """Policy: non-finite inputs are not checked; they propagate. A NaN feature row poisons its
    own domain's result and leaves the other domains exact."""
    p = make_problem(SHAPE["unequal"])
    clean = call(hessalign_ext, op, p)
    bad = p.features.clone()
    bad[0, 1] = float("nan")  # row 0 belongs to domain 0
    out = call(hessalign_ext, op, p, features=bad)
    assert torch.isnan(out[0]).any()
    assert_close(out[1:], clean[1:])


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("op", OPS)
def test_non_finite_weight_propagates(op, value):
    p = make_problem(SHAPE["unequal"])
    weight = p.weight.clone()
    weight[2, 0] = value
    assert not torch.isfinite(call(hessalign_ext, op, p, weight=weight)).all()


def _rss_bytes():
    import resource

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


@pytest.mark.parametrize("op", OPS)
def test_repeated_calls_do_not_grow_memory(op):
    p = make_problem(Shape("leak", (64, 1, 63), C=40, d=32), requires_grad=True)
    ins = (*p.head(), p.vectors) if op == "head_hvp" else p.head()

    def step():
        out = call(hessalign_ext, op, p)
        torch.autograd.grad(out.sum(), ins)

    for _ in range(20):  # warm-up: allocator pools, dispatcher caches
        step()
    before = _rss_bytes()
    for _ in range(100):
        step()
    growth = _rss_bytes() - before
    # leaking what one call allocates (its inputs copies Z̃, W̃ alone are ≥ 10 KiB) would add ≥ 1 MiB
    assert growth < 1 << 20, f"{op}: RSS grew by {growth / 2**20:.2f} MiB over 100 calls"


@pytest.mark.parametrize("op", OPS)
def test_concurrent_calls_from_threads(op):
    problems = [make_problem(SHAPE["domainbed"], seed=s, requires_grad=True) for s in range(4)]
    expected = [call(hessalign_ext, op, q) for q in problems]
    results = [None] * len(problems)
    errors = []

    def worker(i):
        try:
            for _ in range(20):
                results[i] = call(hessalign_ext, op, problems[i])
                torch.autograd.grad(results[i].sum(), problems[i].head())
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(problems))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for r, e in zip(results, expected):
        torch.testing.assert_close(r, e, rtol=0, atol=0)
