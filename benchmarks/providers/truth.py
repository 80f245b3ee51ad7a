"""The float64 truth (hessalign_ext.reference) and the check every provider passes before it is timed."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Optional

import torch
from torch import autograd

from hessalign_ext import penalties, reference

from .problems import (
    FULL_HESSIAN_MAX, HGP_ALPHA, HGP_BETA, HUTCH_ALPHA, HUTCH_BETA, Case, Problem, Provider, Shape, make_problem,
    op_probes,
)


def _f64(problem: Problem) -> Problem:
    return dataclasses.replace(problem, dtype=torch.float64, features=problem.features.double(),
                               weight=problem.weight.double(), bias=problem.bias.double(),
                               vectors=problem.vectors.double())


def truth(problem: Problem, case: Case):
    """The float64 reference output (hessalign_ext.reference) of ``case`` on ``problem``'s inputs."""
    p = _f64(problem)
    Z, W, b = p.head()
    if case.op == "domain_losses":
        return reference.domain_losses(Z, W, b, p.labels, p.offsets)
    if case.op == "head_grad":
        return reference.head_grad(Z, W, b, p.labels, p.offsets)
    if case.op == "head_hvp":
        return reference.head_hvp(Z, W, b, p.vectors, p.offsets)
    if case.op == "head_hessian_diag":
        return reference.head_hessian_diag(Z, W, b, p.offsets)
    if case.op == "head_hessian_trace":
        return reference.head_hessian_trace(Z, W, b, p.offsets)
    if case.op == "head_hessian_inner":
        return reference.head_hessian_inner(Z, W, b, p.offsets)
    if case.op == "hutchinson_diag":
        return reference.hutchinson_diag(Z, W, b, p.offsets, case.K, p.seed)
    if case.op == "hutchinson_trace":
        return reference.hutchinson_trace(Z, W, b, p.offsets, case.K, p.seed)
    return _penalty_truth(p, case)


def _penalty_truth(p: Problem, case: Case):
    """DESIGN.md §2's penalties built from the reference's quantities; gradients by autograd through them."""
    Z, W, b = (t.detach().clone().requires_grad_(True) for t in p.head())
    y, off, E = p.labels, p.offsets, p.shape.E
    g = reference.head_grad(Z, W, b, y, off)
    if case.op == "hgp_step":
        hg = reference.head_hvp(Z, W, b, g, off, labels=y)
        g_bar = g.detach().mean(0)
        target = reference.head_hvp(Z.detach(), W.detach(), b.detach(), g_bar, off, labels=y).detach().mean(0)
        alpha, beta, h_terms = HGP_ALPHA, HGP_BETA, (hg - target).pow(2).flatten(1).sum(1)
    else:
        if case.op == "hutchinson_step":
            dg = reference.hutchinson_diag(Z, W, b, off, case.K, p.seed, labels=y)
            d_bar = reference.hutchinson_diag(Z.detach(), W.detach(), b.detach(), off, case.K,
                                              penalties.mean_probe_seed(p.seed), labels=y).detach().mean(0)
        else:
            dg = reference.head_hessian_diag(Z, W, b, off, labels=y)
            d_bar = dg.detach().mean(0)
        alpha, beta, h_terms = HUTCH_ALPHA, HUTCH_BETA, (dg - d_bar).pow(2).flatten(1).sum(1)
    g_bar = g.detach().mean(0)
    pen = (alpha * h_terms + beta * (g - g_bar).pow(2).flatten(1).sum(1)).sum() / E
    gZ, gW, gb = autograd.grad(pen, (Z, W, b))
    return {"penalty": pen.detach(), "features": gZ, "weight": gW, "bias": gb}


def reference_affordable(shape: Shape, case: Case) -> bool:
    """Whether the float64 reference runs at this shape in reasonable time and memory."""
    cd = shape.C * shape.D
    if case.op in ("head_hessian_diag", "head_hessian_trace", "hutchinson_exact_step"):
        return cd <= 8192
    if case.op == "head_hessian_inner":
        return cd <= FULL_HESSIAN_MAX
    if case.K is not None:
        return case.K * cd <= 4_000_000
    return shape.N * shape.C * max(shape.D, 64) <= 2e9


def rel_error(actual, expected) -> float:
    """max |a - e| / max |e| over every tensor of the output (dicts for penalty steps)."""
    if isinstance(expected, dict):
        return max(rel_error(actual[k], expected[k]) for k in expected)
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if a.shape != e.shape:
        return math.inf
    scale = e.abs().max().item() if e.numel() else 0.0
    err = (a - e).abs().max().item() if e.numel() else 0.0
    return err / scale if scale > 0 else err


TOL = {torch.float32: 1e-3, torch.float64: 1e-9, torch.bfloat16: 5e-2, torch.float16: 2e-2}


def tolerance(case: Case, dtype: torch.dtype) -> float:
    """Largest rel_error accepted: float32 GEMMs over d ~ 2048 lose ~1e-6 relative; penalty
    gradients run through two more GEMM chains, hence the 5× for steps."""
    return TOL[dtype] * (5 if case.is_step else 1)


def check(provider: Provider, problem: Problem, case: Case, cache: Optional[dict] = None):
    """Runs ``provider`` against the float64 truth: (status "ok" | "mismatch", rel_error, tol, check
    shape id, seconds of the provider's call when it ran at ``problem``'s shape, else None).

    At ``problem``'s shape when the reference affords it, else at ``shape.reduced()`` (same
    domains, small head). Hutchinson providers get the op's own probes. A call at the benchmark
    shape warms what the timed calls use (cuBLAS, the allocator), so the timing skips its own
    warm-up call for a provider whose call takes longer than a burst.
    """
    cache = {} if cache is None else cache
    s = problem.shape
    cp = problem if reference_affordable(s, case) else make_problem(s.reduced(), problem.device, problem.dtype)
    key = (case.label, cp.shape.id, str(cp.dtype))
    if key not in cache:
        cache[key] = truth(cp, case)
    probes = op_probes(cp, case.K) if (case.K and provider.uses_probes) else None
    fn = provider.build(cp, case, probes)
    t0 = time.perf_counter()
    out = fn()
    if cp.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    err = rel_error(out, cache[key])
    tol = tolerance(case, problem.dtype)
    return ("ok" if err <= tol else "mismatch"), err, tol, cp.shape.id, seconds if cp is problem else None
