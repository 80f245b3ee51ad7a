"""ours: the fused ops of hessalign_ext.ops, all domains in one call; ours_blas: the same with
every CPU GEMM on ATen's BLAS."""

from __future__ import annotations

import os

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


CPU_GEMM = "HESSALIGN_CPU_GEMM"


def build_blas(problem: Problem, case: Case, probes=None):
    """``ours`` with HESSALIGN_CPU_GEMM=aten: what the ops' own CPU GEMM paths (the few-rows
    kernel of csrc/cpu/segment_tn_cpu.cpp, oneDNN) buy over BLAS, in the same run. Setting and
    restoring the variable adds ~3 us to each call (3% of the smallest DomainBed ops)."""
    run = build(problem, case, probes)

    def on_blas():
        before = os.environ.get(CPU_GEMM)
        os.environ[CPU_GEMM] = "aten"
        try:
            return run()
        finally:
            if before is None:
                del os.environ[CPU_GEMM]
            else:
                os.environ[CPU_GEMM] = before
    return on_blas


def blas_not_applicable(problem: Problem, case: Case):
    return None if problem.device.type == "cpu" else "HESSALIGN_CPU_GEMM chooses CPU GEMMs only (the same as ours)"
