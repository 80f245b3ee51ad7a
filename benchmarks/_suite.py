"""Shared body of the pytest-benchmark suites: one test per (provider, shape) of a case,
grouped by case and shape, each provider checked against the float64 reference first.

    pytest benchmarks/bench_head_hvp.py --benchmark-columns=median,iqr,rounds
    HESSALIGN_BENCH_SHAPES=domainbed pytest benchmarks/ --benchmark-group-by=group

benchmarks/run.py is the full harness (interleaved timing, memory, FLOPs, JSON, plots); these
suites are for quick A/B comparisons while working on a kernel.
"""

from __future__ import annotations

import os
import time
import warnings

import pytest
import torch

import providers as P

warnings.filterwarnings("ignore", message="Full backward hook is firing")
DEVICE = os.environ.get("HESSALIGN_BENCH_DEVICE", "cpu")
if os.environ.get("HESSALIGN_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["HESSALIGN_BENCH_THREADS"]))

QUICK = [P.Shape(3, 32, 512, 7, "domainbed"), P.Shape(3, 32, 2048, 65, "domainbed")]
DOMAINBED = [P.Shape(E, 32, d, C, "domainbed") for E in (3, 5) for d in (512, 2048) for C in (2, 7, 65, 345)]
SHAPES = DOMAINBED if os.environ.get("HESSALIGN_BENCH_SHAPES") == "domainbed" else QUICK
_TRUTH: dict = {}


def params(cases, shapes=None):
    """pytest parameters (case, provider name, shape) with readable ids."""
    out = []
    for case in cases:
        for name in P.providers_for(case):
            for s in shapes or SHAPES:
                out.append(pytest.param(case, name, s, id=f"{case.label}-{s.id}-{name}"))
    return out


def run(benchmark, case: P.Case, name: str, shape: P.Shape, dtype=torch.float32):
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA is not available")
    prov = P.providers_for(case)[name]
    problem = P.make_problem(shape, DEVICE, dtype)
    reason = P.reason_not_applicable(prov, problem, case)
    if reason:
        pytest.skip(reason)
    status, err, tol, cshape, _ = P.check(prov, problem, case, _TRUTH)
    if status != "ok":
        pytest.skip(f"differs from the float64 reference at {cshape}: rel err {err:.2e} > {tol:.0e}")
    fn = prov.build(problem, case)
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)

    def call():
        out = fn()
        sync()
        return out

    benchmark.group = f"{case.label} {shape.id}"
    benchmark.extra_info.update(check_rel_err=err, check_shape=cshape, device=DEVICE)
    t0 = time.perf_counter()
    call()
    first = time.perf_counter() - t0
    if first > 0.5:  # slow providers: a few rounds, not pytest-benchmark's calibration
        benchmark.pedantic(call, rounds=3, iterations=1, warmup_rounds=0)
    else:
        benchmark(call)
