"""ours: the fused ops of hessalign_ext.ops, all domains in one call."""

from __future__ import annotations

import hessalign_ext.ops as ops

from .problems import Case, Problem


def build(problem: Problem, case: Case, probes=None):
    p = problem
    Z, W, b = p.head()
    if case.op == "domain_losses":
        return lambda: ops.domain_losses(Z, W, b, p.labels, p.offsets)
    if case.op == "head_grad":
        return lambda: ops.head_grad(Z, W, b, p.labels, p.offsets)
    if case.op == "head_hvp":
        return lambda: ops.head_hvp(Z, W, b, p.vectors, p.offsets)
    if case.op == "head_hessian_diag":
        return lambda: ops.head_hessian_diag(Z, W, b, p.offsets)
    if case.op == "head_hessian_trace":
        return lambda: ops.head_hessian_trace(Z, W, b, p.offsets)
    if case.op == "head_hessian_inner":
        return lambda: ops.head_hessian_inner(Z, W, b, p.offsets)
    if case.op == "hutchinson_diag":
        return lambda: ops.hutchinson_diag(Z, W, b, p.offsets, case.K, p.seed)
    if case.op == "hutchinson_trace":
        return lambda: ops.hutchinson_trace(Z, W, b, p.offsets, case.K, p.seed)
    raise KeyError(case.op)
