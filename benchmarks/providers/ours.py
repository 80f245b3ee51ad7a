"""ours: the fused ops of hessalign_ext.ops, all domains in one call; ours_blas: the same with
every GEMM on the vendor BLAS (ATen's on the CPU, cuBLAS on CUDA)."""

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


# The setting that puts every GEMM of the ops on the vendor BLAS, per device.
BLAS_SETTING = {"cpu": ("HESSALIGN_CPU_GEMM", "aten"), "cuda": ("HESSALIGN_LOGITS_KERNEL", "0")}


def build_blas(problem: Problem, case: Case, probes=None):
    """``ours`` with every GEMM on the vendor BLAS, in the same run: on the CPU
    HESSALIGN_CPU_GEMM=aten (what the ops' own CPU GEMM ways, the few-rows and few-classes kernels
    and oneDNN, buy over MKL), on CUDA HESSALIGN_LOGITS_KERNEL=0 (what a small head's logits in
    one launch of csrc/cuda/logits_kernels.cuh buy over cuBLAS's GEMM). Setting and restoring the
    variable adds ~3 us to each call (3% of the smallest DomainBed ops on the CPU)."""
    run = build(problem, case, probes)
    name, value = BLAS_SETTING[problem.device.type]

    def on_blas():
        before = os.environ.get(name)
        os.environ[name] = value
        try:
            return run()
        finally:
            if before is None:
                del os.environ[name]
            else:
                os.environ[name] = before
    return on_blas


def blas_not_applicable(problem: Problem, case: Case):
    return None if problem.device.type in BLAS_SETTING else f"no BLAS setting for {problem.device.type}"
