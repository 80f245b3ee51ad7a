"""The penalty steps (forward plus backward into features, weight and bias) by the two backends
of hessalign_ext.penalties; for HGP also the kernel backend's three exact forms."""

from __future__ import annotations

import contextlib

from torch import autograd

from hessalign_ext import penalties
from hessalign_ext.penalties import autograd_reference

from .problems import (
    AUTOGRAD_PENALTY_EXACT_MAX, HGP_ALPHA, HGP_BETA, HUTCH_ALPHA, HUTCH_BETA, Case, Problem, leaf_params, op_probes,
)


@contextlib.contextmanager
def _penalty_probes(problem: Problem, K: int, enabled: bool):
    """During a check: the autograd backend's torch.Generator probes become the op's probes."""
    if not enabled:
        yield
        return
    s = problem.shape
    mean_seed = penalties.mean_probe_seed(problem.seed)
    table = {problem.seed: op_probes(problem, K), mean_seed: op_probes(problem, K, mean_seed)}
    counters = {k: 0 for k in table}
    saved = autograd_reference._rademacher

    def fake(gen, like):
        key = gen.initial_seed()
        k = counters[key] % K
        counters[key] += 1
        return table[key][k].reshape(s.C, s.D).to(like.dtype)

    autograd_reference._rademacher = fake
    try:
        yield
    finally:
        autograd_reference._rademacher = saved


def _step_inputs(p: Problem):
    Z = p.features.detach().clone().requires_grad_(True)
    W, b = leaf_params(p)
    return Z, W, b


def _penalty_call(p: Problem, case: Case, Z, W, b, backend: str, method: str):
    if case.op == "hgp_step":
        return penalties.hgp(Z, W, b, p.labels, p.offsets, alpha=HGP_ALPHA, beta=HGP_BETA, backend=backend,
                             method=method)
    K = case.K if case.op == "hutchinson_step" else None
    return penalties.hutchinson(Z, W, b, p.labels, p.offsets, alpha=HUTCH_ALPHA, beta=HUTCH_BETA, num_probes=K,
                                seed=p.seed, backend=backend)


def builder(backend: str, method: str = "auto"):
    """The build function of the step by ``backend`` (HGP's kernel backend in form ``method``)."""

    def build(problem: Problem, case: Case, probes=None):
        p = problem
        Z, W, b = _step_inputs(p)
        exact_probes = probes is not None and backend == "autograd" and case.op == "hutchinson_step"

        def run():
            with _penalty_probes(p, case.K, exact_probes):
                pen = _penalty_call(p, case, Z, W, b, backend, method)
            gZ, gW, gb = autograd.grad(pen, (Z, W, b))
            return {"penalty": pen.detach(), "features": gZ, "weight": gW, "bias": gb}
        return run
    return build


def not_applicable_for(backend: str):
    def na(problem: Problem, case: Case):
        cd = problem.shape.C * problem.shape.D
        if backend == "autograd" and case.op == "hutchinson_exact_step" and cd > AUTOGRAD_PENALTY_EXACT_MAX:
            return (f"autograd backend: the exact diagonal is C·D = {cd} separate HVPs per domain "
                    f"(> {AUTOGRAD_PENALTY_EXACT_MAX})")
        if backend == "autograd" and case.op == "hutchinson_step" and not hasattr(autograd_reference, "_rademacher"):
            return "autograd backend: its probes cannot be matched for the check (no _rademacher to patch)"
        return None
    return na
