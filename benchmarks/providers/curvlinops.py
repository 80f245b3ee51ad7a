"""curvlinops: HessianLinearOperator (the HVP) and its Hutchinson estimators, called on chunks of
probes and averaged (it vmaps all probes at once)."""

from __future__ import annotations

import contextlib
from typing import List, Optional

import torch

from .problems import Case, Problem, join_block, linear_module, probe_chunk, split_block


@contextlib.contextmanager
def _curvlinops_probes(vectors: Optional[List[torch.Tensor]]):
    """During a check: curvlinops' random_vector yields the op's probes, in order."""
    if vectors is None:
        yield
        return
    import curvlinops.diagonal.hutchinson as hd
    import curvlinops.trace.hutchinson as ht

    it = iter(vectors)
    saved = hd.random_vector, ht.random_vector
    hd.random_vector = ht.random_vector = lambda *a, **k: next(it)
    try:
        yield
    finally:
        hd.random_vector, ht.random_vector = saved


def build(problem: Problem, case: Case, probes=None):
    import curvlinops

    p = problem
    s = p.shape
    model = linear_module(p)
    params = list(model.parameters())
    loss_fn = torch.nn.CrossEntropyLoss()

    def operator(lo, hi):
        return curvlinops.HessianLinearOperator(model, loss_fn, params, [(p.features[lo:hi], p.labels[lo:hi])],
                                                check_deterministic=False)

    if case.op == "head_hvp":
        def run():
            return torch.stack([join_block(*operator(lo, hi) @ list(split_block(p.vectors[e], s.d)))
                                for e, (lo, hi) in enumerate(p.spans)])
        return run
    if case.op in ("hutchinson_diag", "hutchinson_trace"):
        diag = case.op == "hutchinson_diag"
        est = curvlinops.hutchinson_diag if diag else curvlinops.hutchinson_trace
        B = probe_chunk(s)
        flat = None
        if probes is not None:  # curvlinops' flat layout: [W.flatten(), b]
            flat = [torch.cat([v[:, :s.d].reshape(-1), v[:, s.d]]) for v in probes]

        def run():
            out = []
            for lo, hi in p.spans:
                H = operator(lo, hi)
                acc = 0.0
                for k0 in range(0, case.K, B):
                    kb = min(B, case.K - k0)
                    with _curvlinops_probes(None if flat is None else flat[k0:k0 + kb]):
                        acc = acc + est(H, kb) * kb
                acc = acc / case.K
                out.append(join_block(acc[:s.C * s.d].view(s.C, s.d), acc[s.C * s.d:]) if diag else acc)
            return torch.stack(out)
        return run
    raise KeyError(case.op)


def not_applicable(problem: Problem, case: Case):
    if case.op not in ("head_hvp", "hutchinson_diag", "hutchinson_trace"):
        return "curvlinops: no closed form for this (only HVPs and estimators built on them)"
    if problem.dtype not in (torch.float32, torch.float64):
        return "curvlinops: float32/float64 only"
    return None
