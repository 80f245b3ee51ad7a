"""closed_form: the formulas of DESIGN.md §1 as plain torch expressions, a Python loop over
domains (and probe chunks): what one writes without the extension."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .problems import Case, Problem, ProbeSource, augment, formula_build


def _cf_domain(p: Problem):
    """Per domain: (augmented rows Z̃_e, probabilities P_e, n_e)."""
    Zt = augment(p.features)
    for s, t in p.spans:
        P = F.linear(p.features[s:t], p.weight, p.bias).softmax(dim=1)
        yield Zt[s:t], P, t - s


def _cf_losses(p: Problem):
    return torch.stack([F.cross_entropy(F.linear(p.features[s:t], p.weight, p.bias), p.labels[s:t])
                        for s, t in p.spans])


def _cf_grad(p: Problem):
    Zt = augment(p.features)
    out = []
    for s, t in p.spans:
        R = F.linear(p.features[s:t], p.weight, p.bias).softmax(dim=1)
        R[torch.arange(t - s, device=R.device), p.labels[s:t]] -= 1
        out.append(R.T @ Zt[s:t] / (t - s))
    return torch.stack(out)


def _cf_hvp(p: Problem):
    out = []
    for e, (z, P, n) in enumerate(_cf_domain(p)):
        U = z @ p.vectors[e].T
        S = P * (U - (P * U).sum(1, keepdim=True))
        out.append(S.T @ z / n)
    return torch.stack(out)


def _cf_diag(p: Problem):
    return torch.stack([(P * (1 - P)).T @ (z * z) / n for z, P, n in _cf_domain(p)])


def _cf_trace(p: Problem):
    return torch.stack([((P * (1 - P)).sum(1) * (z * z).sum(1)).sum() / n for z, P, n in _cf_domain(p)])


def _cf_inner(p: Problem):
    doms = list(_cf_domain(p))
    G = torch.empty(len(doms), len(doms), dtype=p.dtype, device=p.device)
    for a, (za, Pa, na) in enumerate(doms):
        for b, (zb, Pb, nb) in enumerate(doms):
            S = Pa @ Pb.T
            T = S - Pa @ (Pb * Pb).T - (Pa * Pa) @ Pb.T + S * S
            G[a, b] = (T * (za @ zb.T).pow(2)).sum() / (na * nb)
    return G


def _cf_hutchinson(p: Problem, src: ProbeSource, diag: bool):
    s = p.shape
    doms = list(_cf_domain(p))
    acc = [torch.zeros(s.C, s.D, dtype=p.dtype, device=p.device) if diag else 0.0 for _ in doms]
    for k0, B in src.chunks():
        V = src(k0, B)  # (B, C, D), shared by all domains
        Vf = V.reshape(B * s.C, s.D)
        for e, (z, P, n) in enumerate(doms):
            U = (z @ Vf.T).view(-1, B, s.C)  # u_ibc = v_bc · z̃_i
            Pb = P.unsqueeze(1)
            if diag:
                S = Pb * (U - (Pb * U).sum(-1, keepdim=True))
                O = (S.reshape(-1, B * s.C).T @ z).view(B, s.C, s.D)  # n_e · H_e v_b
                acc[e] = acc[e] + (V * O).sum(0) / n
            else:
                m = (Pb * U).sum(-1)
                acc[e] = acc[e] + ((Pb * U * U).sum(-1) - m * m).sum() / n
    return torch.stack([a / src.K for a in acc]) if diag else torch.stack(acc) / src.K


SIMPLE = {"domain_losses": _cf_losses, "head_grad": _cf_grad, "head_hvp": _cf_hvp, "head_hessian_diag": _cf_diag,
          "head_hessian_trace": _cf_trace, "head_hessian_inner": _cf_inner}


def build(problem: Problem, case: Case, probes=None):
    return formula_build(problem, case, probes, SIMPLE, _cf_hutchinson)
