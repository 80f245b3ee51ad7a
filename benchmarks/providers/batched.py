"""closed_form_batched: the closed forms of closed_form.py with every domain in the same torch
calls: one logits GEMM over all rows, the per-domain products as batched GEMMs over (E, n, ·)
views, the probes' products with all rows in one GEMM. The strongest plain-PyTorch peer: what
fusion buys beyond batching. It takes domains of equal size, as every benchmark head and a
DomainBed batch have (``Shape``: E domains of n rows)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .problems import Case, Problem, ProbeSource, augment, formula_build


def _rows(p: Problem):
    """(augmented rows Z̃ (E, n, D), probabilities P (E, n, C), n)."""
    s = p.shape
    Zt = augment(p.features).view(s.E, s.n, s.D)
    P = F.linear(p.features, p.weight, p.bias).softmax(dim=1).view(s.E, s.n, s.C)
    return Zt, P, s.n


def _losses(p: Problem):
    s = p.shape
    rows = F.cross_entropy(F.linear(p.features, p.weight, p.bias), p.labels, reduction="none")
    return rows.view(s.E, s.n).mean(1)


def _grad(p: Problem):
    s = p.shape
    R = F.linear(p.features, p.weight, p.bias).softmax(dim=1)
    R[torch.arange(s.N, device=R.device), p.labels] -= 1
    return torch.bmm(R.view(s.E, s.n, s.C).transpose(1, 2), augment(p.features).view(s.E, s.n, s.D)) / s.n


def _hvp(p: Problem):
    Zt, P, n = _rows(p)
    U = torch.bmm(Zt, p.vectors.transpose(1, 2))  # (E, n, C): u_ic = v_c · z̃_i
    S = P * (U - (P * U).sum(-1, keepdim=True))
    return torch.bmm(S.transpose(1, 2), Zt) / n


def _diag(p: Problem):
    Zt, P, n = _rows(p)
    return torch.bmm((P * (1 - P)).transpose(1, 2), Zt * Zt) / n


def _trace(p: Problem):
    Zt, P, n = _rows(p)
    return ((P * (1 - P)).sum(-1) * (Zt * Zt).sum(-1)).sum(1) / n


def _inner(p: Problem):
    s = p.shape
    Zt, P, n = _rows(p)
    Pf, Zf = P.reshape(s.N, s.C), Zt.reshape(s.N, s.D)
    S = Pf @ Pf.T
    T = S - Pf @ (Pf * Pf).T - (Pf * Pf) @ Pf.T + S * S
    return (T * (Zf @ Zf.T).pow(2)).view(s.E, n, s.E, n).sum((1, 3)) / (n * n)


def _hutchinson(p: Problem, src: ProbeSource, diag: bool):
    s = p.shape
    Zt, P, n = _rows(p)
    Zf, Pb = Zt.reshape(s.N, s.D), P.unsqueeze(2)  # (E, n, 1, C)
    acc = torch.zeros(s.E, s.C, s.D, dtype=p.dtype, device=p.device) if diag else 0.0
    for k0, B in src.chunks():
        V = src(k0, B)  # (B, C, D), shared by all domains
        U = (Zf @ V.reshape(B * s.C, s.D).T).view(s.E, n, B, s.C)  # every row's products, one GEMM
        if diag:
            S = Pb * (U - (Pb * U).sum(-1, keepdim=True))
            O = torch.bmm(S.reshape(s.E, n, B * s.C).transpose(1, 2), Zt).view(s.E, B, s.C, s.D)  # n · H_e v_b
            acc = acc + (V * O).sum(1) / n
        else:
            m = (Pb * U).sum(-1)
            acc = acc + ((Pb * U * U).sum(-1) - m * m).sum((1, 2)) / n
    return acc / src.K


SIMPLE = {"domain_losses": _losses, "head_grad": _grad, "head_hvp": _hvp, "head_hessian_diag": _diag,
          "head_hessian_trace": _trace, "head_hessian_inner": _inner}


def build(problem: Problem, case: Case, probes=None):
    return formula_build(problem, case, probes, SIMPLE, _hutchinson)
