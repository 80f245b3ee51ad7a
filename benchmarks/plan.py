"""What benchmarks/run.py runs: the heads (DomainBed, large, the scaling series), the cases
(every op, the Hutchinson ops at several K, the penalty steps) and each case's FLOPs and bytes."""

from __future__ import annotations

import torch

import providers as P

def domainbed_shapes(quick: bool):
    if quick:
        return [P.Shape(3, 32, 2048, C, "domainbed") for C in (7, 345)]
    return [P.Shape(E, 32, d, C, "domainbed") for E in (3, 5) for d in (512, 2048) for C in (2, 7, 65, 345)]


def large_shapes(device: str, quick: bool):
    if device == "cuda":
        if quick:
            return [P.Shape(4, 2048, 4096, 32768, "large")]
        return [P.Shape(4, 2048, 4096, C, "large") for C in (1024, 32768)] + [P.Shape(4, 512, 4096, 32768, "large")]
    # CPU: a reduced large head (N = 1024, d = 1024, C = 8192), the GPU's is out of reach here.
    return [P.Shape(4, 256, 1024, 8192, "large")]


def op_cases(Ks):
    out = [P.Case(op) for op in P.OPS if not op.startswith("hutchinson")]
    out += [P.Case(op, K) for op in ("hutchinson_diag", "hutchinson_trace") for K in Ks]
    return out


STEP_CASES = [P.Case("hgp_step"), P.Case("hutchinson_step", 300), P.Case("hutchinson_exact_step")]
SCALING_OPS = ("head_hvp", "head_hessian_diag")


def every_case():
    """Every op (the Hutchinson ops at K = 1, 10, 300) and every penalty step."""
    return op_cases((1, 10, 300)) + STEP_CASES


def plan(device: str, quick: bool, dtype: torch.dtype, smoke: bool = False):
    """Jobs: (case, shape, provider names or None for all, tags). Duplicates are merged."""
    jobs = []
    low_precision = dtype in (torch.bfloat16, torch.float16)
    if not (quick and low_precision and device == "cuda"):
        for s in domainbed_shapes(quick):
            jobs += [(c, s, None, {"domainbed"}) for c in every_case()]
    for s in large_shapes(device, quick):
        cases = op_cases((1,) if quick else (1, 10)) + [P.Case("hgp_step")]
        if quick and low_precision:
            cases = [P.Case("head_hvp")]
        jobs += [(c, s, None, {"large"}) for c in cases]
    if not quick:
        base = dict(d=2048, C=65)
        if device == "cuda":
            Cs, ns, Es = (2, 7, 65, 345, 1024, 4096, 32768), (8, 32, 128, 512, 2048, 8192), (1, 2, 4, 8, 16, 32)
        else:
            Cs, ns, Es = (2, 7, 65, 345, 1024, 4096), (8, 32, 128, 512, 2048), (1, 2, 4, 8, 16)
        for C in Cs:
            jobs += [(P.Case(op), P.Shape(3, 32, 2048, C, "scaling-C"), None, {"scaling-C"}) for op in SCALING_OPS]
        for n in ns:
            jobs += [(P.Case(op), P.Shape(3, n, base["d"], base["C"], "scaling-N"), None, {"scaling-N"})
                     for op in SCALING_OPS]
        for K in (1, 3, 10, 30, 100, 300):
            jobs += [(P.Case(op, K), P.Shape(3, 32, base["d"], base["C"], "scaling-K"), None, {"scaling-K"})
                     for op in ("hutchinson_diag", "hutchinson_trace")]
        for E in Es:  # each job also times one domain of E·32 rows (run_job)
            jobs += [(P.Case(op), P.Shape(E, 32, base["d"], base["C"], "scaling-E"), ["ours", "closed_form"],
                      {"scaling-E"} | ({"scaling-E1"} if E == 1 else set())) for op in SCALING_OPS]
    elif device == "cuda":  # the fusion target at the large head: E domains against one domain of E·n rows
        s = large_shapes(device, quick)[0]
        jobs.append((P.Case("head_hvp"), s, ["ours"], {"scaling-E"}))
    if smoke:  # the harness itself on tiny heads (seconds): every code path, meaningless numbers
        jobs = [(P.Case(c.op, None if c.K is None else min(c.K, 10)),
                 P.Shape(s.E, max(2, s.n // 8), max(4, s.d // 64), max(2, s.C // 8), s.tag), pv, tg)
                for c, s, pv, tg in jobs]
    merged = {}
    for case, shape, provs, tags in jobs:
        key = (case.label, shape.E, shape.n, shape.d, shape.C)
        if key not in merged:
            merged[key] = [case, shape, None if provs is None else list(provs), set(tags)]
            continue
        m = merged[key]
        m[3] |= tags
        if m[2] is not None:
            m[2] = None if provs is None else sorted(set(m[2]) | set(provs))
    return [tuple(v) for v in merged.values()]


# ----------------------------------------------------------------------------- FLOPs


def gemm_count(case: P.Case):
    """GEMMs of N·D·C each (DESIGN.md §4); None where the cost is not GEMM-shaped."""
    return {"domain_losses": 1, "head_grad": 2, "head_hvp": 3, "head_hessian_diag": 2, "head_hessian_trace": 1,
            "hutchinson_diag": None if case.K is None else 1 + 2 * case.K,
            "hutchinson_trace": None if case.K is None else 1 + case.K}.get(case.op)


def flops(case: P.Case, s: P.Shape):
    if case.op == "head_hessian_inner":  # logits; Gram Z̃Z̃ᵀ; P Pᵀ and P (P⊙P)ᵀ over all N² pairs
        return 2 * (s.N * s.D * s.C + s.N * s.N * s.D + 2 * s.N * s.N * s.C)  # (P⊙P) Pᵀ: the latter's transpose
    g = gemm_count(case)
    return None if g is None else 2 * g * s.N * s.D * s.C


# ----------------------------------------------------------------------------- bytes

LABELED = ("domain_losses", "head_grad")  # the ops the benchmarks give labels (providers/ours.py)
SCALAR_OUT = ("domain_losses", "head_hessian_trace", "hutchinson_trace")


def min_bytes(case: P.Case, s: P.Shape, elem: int):
    """The fewest bytes the case must move through memory (the device README's METHOD.md): each
    input read once and each output written once, in the run's dtype (labels int64). Nothing in
    between counts: not the N×C logits, not a probe block, which a fused kernel need not write.
    A penalty step reads the head and labels and writes their gradients."""
    head = (s.N * s.d + s.C * s.d + s.C) * elem  # features, weight, bias
    labels = 8 * s.N
    if case.is_step:
        return 2 * head + labels
    block = s.E * s.C * s.D * elem  # an (E, C, D) parameter block
    out = s.E * elem if case.op in SCALAR_OUT else (s.E * s.E * elem if case.op == "head_hessian_inner" else block)
    return head + (labels if case.op in LABELED else 0) + (block if case.op == "head_hvp" else 0) + out
