"""Whole-Hessian alignment: exact (1/E) Σ_e ‖H_e − H̄‖_F² from Frobenius inner products."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .autograd_reference import autograd_domain_grads, autograd_full_hessian
from .common import (_flat, _ops, _params, _result, _sqdev, _sqdist, checked, dominant_split, loss_rows,
                     named_errors)


def _dominant_relative(P: torch.Tensor):
    """(r, e): r = p − e_k for the rows whose class k holds more than DOMINANT_PROB of the mass (its
    entry −Σ_{c≠k} p_c, summed directly), r = p for the others, and e their one-hot (zero rows for the others)."""
    dominant, off_mass = dominant_split(P)
    e = dominant.to(P.dtype)
    return P * (1 - e) - e * off_mass, e


def _pair_traces(ra, ea, rb, eb) -> torch.Tensor:
    """T_ij = tr(A_i A_j) for rows i of (ra, ea) and j of (rb, eb), every term a product of r's entries."""
    sigma = ra @ rb.T
    a, b = ea @ rb.T, ra @ eb.T   # r_j[k_i], r_i[k_j]
    return (sigma - 2 * (ra @ (rb * eb).T) - ra @ (rb * rb).T - 2 * ((ra * ea) @ rb.T) - (ra * ra) @ rb.T
            + 2 * (ea @ eb.T) * sigma + 2 * a * b + 2 * (a + b) * sigma + sigma * sigma)


@named_errors("head_hessian_inner_torch")
def head_hessian_inner_torch(features: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                             offsets: torch.Tensor, *, labels: Optional[torch.Tensor] = None,
                             method: str = "auto", ignore_index: int = -100, class_weight=None,
                             label_smoothing: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """E×E matrix of Frobenius inner products ⟨H_a, H_b⟩_F of the domains' head Hessians.

    Plain torch, differentiable by autograd, no Hessian formed (DESIGN.md §1). Two exact
    routes, picked by cost when ``method="auto"``:

    - ``"samples"``: ``Σ_{i∈a, j∈b} c_i c_j T_ij (z̃_i·z̃_j)²`` with ``T_ij = tr(A_i A_j)``
      by GEMMs over the rows' probabilities; O(n_a n_b (C+D)), memory n_a·n_b per pair.
    - ``"features"``: ``Σ_{c,c'} ⟨M^a_{cc'}, M^b_{cc'}⟩`` with the D×D blocks
      ``M^e_{cc'} = Z̃_eᵀ diag(c_i A_i[c,c']) Z̃_e``; O(N C² D²), memory E·C²·D². Cheaper for
      few classes and large domains (ColoredMNIST full batch).

    ``labels`` only carry the loss options (as for the curvature ops). Both routes write a row
    whose class k holds most of the mass relative to it, ``A_i = diag(r) − e rᵀ − r eᵀ − r rᵀ`` with
    ``r = p − e_k`` (csrc/math/head_hessian_inner.h), so confident rows keep their precision.
    """
    offs, opts = checked("head_hessian_inner_torch", features, weight, bias, labels, offsets, "kernel",
                         labels_required=False, ignore_index=ignore_index, class_weight=class_weight,
                         label_smoothing=label_smoothing, reduction=reduction)
    if method not in ("auto", "samples", "features"):
        raise ValueError(f"head_hessian_inner_torch: method must be 'auto', 'samples' or 'features'; got {method!r}")
    E = len(offs) - 1
    N, C = features.shape[0], weight.shape[0]
    logits = F.linear(features, weight, bias)
    P = logits.softmax(dim=1)
    c = loss_rows(labels, offs, C, opts, logits.dtype, logits.device)[0]
    Zt = features if bias is None else torch.cat([features, features.new_ones(N, 1)], dim=1)
    D = Zt.shape[1]
    if method == "auto":
        cost_samples = N * N * (C + D)
        cost_features = N * C * (C + 1) // 2 * D * D + E * E * C * C * D * D
        fits = E * C * C * D * D <= 2**25
        method = "features" if fits and cost_features < cost_samples else "samples"

    r, e = _dominant_relative(P)
    if method == "features":
        blocks = []
        for s, t in zip(offs, offs[1:]):
            ri, ei, z, ce = r[s:t], e[s:t], Zt[s:t], c[s:t]
            # A_i[c,c'] = p_c δ_cc' − p_c p_c' (in r and e)  →  coefficient per row and class pair
            a = (torch.diag_embed(ri) - ei[:, :, None] * ri[:, None, :] - ri[:, :, None] * ei[:, None, :]
                 - ri[:, :, None] * ri[:, None, :]) * ce[:, None, None]                  # (n, C, C)
            blocks.append(torch.einsum("nkl,nd,nf->kldf", a, z, z))                     # (C, C, D, D)
        M = torch.stack(blocks).flatten(1)                                               # (E, C²D²)
        return M @ M.T

    rows = []
    for sa, ta in zip(offs, offs[1:]):
        row = []
        for sb, tb in zip(offs, offs[1:]):
            T = _pair_traces(r[sa:ta], e[sa:ta], r[sb:tb], e[sb:tb])
            K = (Zt[sa:ta] @ Zt[sb:tb].T).pow(2)
            row.append((c[sa:ta][:, None] * c[sb:tb][None, :] * T * K).sum())
        rows.append(torch.stack(row))
    return torch.stack(rows)


@named_errors("hessian_alignment_full")
def hessian_alignment_full(features: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                           labels: torch.Tensor, offsets: torch.Tensor, alpha: float = 1e-3, beta: float = 5e-3,
                           *, backend: str = "kernel", return_terms: bool = False,
                           ignore_index: int = -100, class_weight=None, label_smoothing: float = 0.0,
                           reduction: str = "mean"):
    """Exact whole-Hessian alignment: ``(1/E) Σ_e [α ‖H_e − H̄‖_F² + β ‖g_e − ḡ‖²]``.

    ``‖H_e − H̄‖_F² = G_ee − (2/E) Σ_b G_eb + (1/E²) Σ_ab G_ab`` from the E×E matrix
    ``G_ab = ⟨H_a, H_b⟩_F``: the compiled op ``ops.head_hessian_inner`` when the extension
    has it, else :func:`head_hessian_inner_torch`. H̄ and ḡ are exact means of the per-domain
    terms, so detaching them changes neither the value nor the gradient (Σ_e (H_e − H̄) = 0);
    the closed form keeps them attached. G is computed in float64 whatever the inputs' dtype:
    where the domains align, ``‖H_e − H̄‖²`` is a small difference of the large ``G_ab``, and
    float32 there loses it entirely (26-160% off on nearly identical domains). ``g − ḡ`` is
    taken by ``_sqdev``. ``backend="autograd"`` forms the Hessians explicitly (small heads
    only; the oracle).
    """
    offs, opts = checked("hessian_alignment_full", features, weight, bias, labels, offsets, backend,
                         ignore_index=ignore_index, class_weight=class_weight, label_smoothing=label_smoothing,
                         reduction=reduction)
    E = len(offs) - 1
    if backend == "kernel":
        ops = _ops()
        g = ops.head_grad(features, weight, bias, labels, offsets, **opts)
        inner = getattr(ops, "head_hessian_inner", head_hessian_inner_torch)
        # ‖H_e − H̄‖² is a small difference of the large G_ab where the domains align: G in float64
        wide = [None if t is None else t.to(torch.float64) for t in (features, weight, bias)]
        opts64 = dict(opts, class_weight=None if opts["class_weight"] is None else opts["class_weight"].double())
        G = inner(*wide, offsets, labels=labels, **opts64)
        hess_terms = (torch.diagonal(G) - 2.0 / E * G.sum(1) + G.sum() / E**2).to(features.dtype)
    else:
        W, b, params = _params(weight, bias)
        _, grads = autograd_domain_grads(features, W, b, params, labels, offs, opts)
        g = torch.stack([_flat(p) for p in grads])
        H = torch.stack([autograd_full_hessian(p, params) for p in grads])
        hess_terms = (H - H.mean(0, keepdim=True)).pow(2).flatten(1).sum(1)
    grad_terms = _sqdev(g) if backend == "kernel" else _sqdist(g, g.mean(0, keepdim=True))
    penalty = (alpha * hess_terms + beta * grad_terms).sum() / E
    return _result(penalty, hess_terms, grad_terms, return_terms)
