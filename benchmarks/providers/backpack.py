"""backpack: BackPACK's DiagHessian (the exact diagonal; the trace as its sum)."""

from __future__ import annotations

import torch

from .problems import BACKPACK_MAX, Case, Problem, join_block, linear_module


def build(problem: Problem, case: Case, probes=None):
    import backpack
    from backpack.extensions import DiagHessian

    p = problem
    model = backpack.extend(linear_module(p))
    loss_fn = backpack.extend(torch.nn.CrossEntropyLoss())

    def diag():
        out = []
        for s, t in p.spans:
            loss = loss_fn(model(p.features[s:t]), p.labels[s:t])
            with backpack.backpack(DiagHessian()):
                loss.backward()
            out.append(join_block(model.weight.diag_h, model.bias.diag_h))
        return torch.stack(out)

    if case.op == "head_hessian_diag":
        return diag
    if case.op == "head_hessian_trace":
        return lambda: diag().sum((1, 2))
    raise KeyError(case.op)


def not_applicable(problem: Problem, case: Case):
    if case.op not in ("head_hessian_diag", "head_hessian_trace"):
        return "BackPACK: no such quantity (DiagHessian gives the exact diagonal only)"
    if problem.dtype not in (torch.float32, torch.float64):
        return "BackPACK: float32/float64 only"
    s = problem.shape
    if s.n * s.C * s.C > BACKPACK_MAX:
        return f"BackPACK: its CE square-root Hessian holds n·C² = {s.n * s.C * s.C} elements per domain"
    return None
