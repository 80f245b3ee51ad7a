"""autograd: double backward through an explicit F.linear head and F.cross_entropy, one domain
at a time, as the paper's reference code does it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import autograd

from .problems import (
    ONE_HOT_CHUNK, Case, Problem, ProbeSource, join_block, leaf_params, one_hot_diagonal, split_block,
)


def _ag_grads(p: Problem, W, b, create_graph: bool):
    for s, t in p.spans:
        loss = F.cross_entropy(F.linear(p.features[s:t], W, b), p.labels[s:t])
        yield autograd.grad(loss, (W, b), create_graph=create_graph)


def _ag_hvp(gW, gb, W, b, vW, vb, retain: bool):
    hW, hb = autograd.grad((gW * vW).sum() + (gb * vb).sum(), (W, b), retain_graph=retain)
    return join_block(hW, hb)


def _ag_exact_diag(p: Problem, W, b):
    out = []
    for gW, gb in _ag_grads(p, W, b, True):
        flat = join_block(gW, gb).reshape(-1)
        out.append(one_hot_diagonal(p, lambda V: join_block(*autograd.grad(
            flat, (W, b), V.flatten(1), retain_graph=True, is_grads_batched=True))))
    return torch.stack(out)


def _ag_full_hessians(p: Problem, W, b):
    s = p.shape
    n = s.C * s.D
    eye = torch.eye(n, dtype=p.dtype, device=p.device)
    out = []
    for gW, gb in _ag_grads(p, W, b, True):
        flat = join_block(gW, gb).reshape(-1)
        rows = [join_block(*autograd.grad(flat, (W, b), eye[j0:j0 + ONE_HOT_CHUNK], retain_graph=True,
                                     is_grads_batched=True)).reshape(-1, n)
                for j0 in range(0, n, ONE_HOT_CHUNK)]
        out.append(torch.cat(rows))
    return torch.stack(out)


def _ag_hutchinson(p: Problem, W, b, src: ProbeSource, diag: bool):
    s = p.shape
    grads = list(_ag_grads(p, W, b, True))
    acc = [torch.zeros(s.C, s.D, dtype=p.dtype, device=p.device) if diag else 0.0 for _ in grads]
    for k0, B in src.chunks():
        V = src(k0, B)
        for k in range(B):  # one double backward per probe and domain, as the reference code
            v = V[k]
            vW, vb = split_block(v, s.d)
            for e, (gW, gb) in enumerate(grads):
                hv = _ag_hvp(gW, gb, W, b, vW, vb, retain=True)
                acc[e] = acc[e] + (v * hv if diag else (v * hv).sum())
    return torch.stack(acc) / src.K


def build(problem: Problem, case: Case, probes=None):
    p = problem
    W, b = leaf_params(p)
    d = p.shape.d
    if case.op == "head_grad":
        return lambda: torch.stack([join_block(*g) for g in _ag_grads(p, W, b, False)])
    if case.op == "head_hvp":
        def run():
            return torch.stack([_ag_hvp(gW, gb, W, b, *split_block(p.vectors[e], d), retain=False)
                                for e, (gW, gb) in enumerate(_ag_grads(p, W, b, True))])
        return run
    if case.op == "head_hessian_diag":
        return lambda: _ag_exact_diag(p, W, b)
    if case.op == "head_hessian_trace":
        return lambda: _ag_exact_diag(p, W, b).sum((1, 2))
    if case.op == "head_hessian_inner":
        def run():
            H = _ag_full_hessians(p, W, b).flatten(1).double()  # float32 sums of (C·D)² terms lose ~3e-3
            return (H @ H.T).to(p.dtype)
        return run
    if case.op in ("hutchinson_diag", "hutchinson_trace"):
        src = ProbeSource(p, case.K, probes)
        diag = case.op == "hutchinson_diag"
        return lambda: _ag_hutchinson(p, W, b, src, diag)
    raise KeyError(case.op)
