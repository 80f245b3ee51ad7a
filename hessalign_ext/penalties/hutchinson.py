"""Hutchinson: Hessian-diagonal alignment, by Rademacher probes or exactly (DESIGN.md §2)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import autograd

from .autograd_reference import autograd_domain_grads, hutchinson_diag_autograd
from .common import _flat, _ops, _params, _result, _sqdev, _sqdist, checked, named_errors


def mean_probe_seed(seed: int) -> int:
    """Seed of the mean loss's probes: independent of the per-domain probes (as in the reference)."""
    return (int(seed) * 0x9E3779B1 + 0x7F4A7C15) % (2**62)


@named_errors("hutchinson")
def hutchinson(features: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], labels: torch.Tensor,
               offsets: torch.Tensor, alpha: float = 1e-3, beta: float = 5e-3, num_probes: Optional[int] = 300,
               seed: int = 0, *, backend: str = "kernel", return_terms: bool = False, ignore_index: int = -100,
               class_weight=None, label_smoothing: float = 0.0, reduction: str = "mean"):
    """Hutchinson Hessian-diagonal alignment penalty (DESIGN.md §2):

    ``(1/E) Σ_e [ α ‖D_e − D̄_detached‖² + β ‖g_e − ḡ_detached‖² ]``

    ``D_e`` estimates ``diag(H_e)`` with ``num_probes`` Rademacher probes and ``D̄`` estimates
    the mean loss's diagonal with its own, independent probes (both from ``seed``).
    ``num_probes=None`` uses the exact closed-form diagonals instead (then ``D̄`` is exactly
    the mean of the ``D_e``). With probes the squared distance is biased upward by
    ``(α/(E K)) Σ_e (‖offdiag H_e‖_F² + ‖offdiag H̄‖_F²)`` in expectation (DESIGN.md §1).

    The kernel backend's probes are counter-based (seed, probe, element) and shared by all
    domains; the autograd backend draws them from ``torch.Generator().manual_seed(seed)``
    (a different stream, the same distribution).
    """
    offs, opts = checked("hutchinson", features, weight, bias, labels, offsets, backend, ignore_index=ignore_index,
                         class_weight=class_weight, label_smoothing=label_smoothing, reduction=reduction)
    if num_probes is not None and (int(num_probes) != num_probes or num_probes < 1):
        raise ValueError(f"hutchinson: num_probes must be a positive int or None; got {num_probes}")
    E = len(offs) - 1

    if backend == "kernel":
        ops = _ops()
        g = ops.head_grad(features, weight, bias, labels, offsets, **opts)
        grad_terms = _sqdev(g)  # ḡ is the mean: _sqdev keeps the gradient exact near alignment
        if num_probes is None:
            hess_terms = _sqdev(ops.head_hessian_diag(features, weight, bias, offsets, labels=labels, **opts))
        else:
            d = ops.hutchinson_diag(features, weight, bias, offsets, int(num_probes), int(seed), labels=labels, **opts)
            with torch.no_grad():
                d_bar = ops.hutchinson_diag(features.detach(), weight.detach(),
                                            None if bias is None else bias.detach(), offsets, int(num_probes),
                                            mean_probe_seed(seed), labels=labels, **opts).mean(0)
            hess_terms = _sqdist(d, d_bar[None])
    else:
        W, b, params = _params(weight, bias)
        losses, grads = autograd_domain_grads(features, W, b, params, labels, offs, opts)
        g = torch.stack([_flat(p) for p in grads])
        gen = torch.Generator().manual_seed(int(seed))
        d = torch.stack([hutchinson_diag_autograd(p, params, num_probes, gen) for p in grads])
        mean_parts = autograd.grad(torch.stack(losses).mean(), params, create_graph=True)
        if num_probes is None:
            d_bar = d.detach().mean(0)
        else:
            gen_bar = torch.Generator().manual_seed(mean_probe_seed(seed))
            d_bar = hutchinson_diag_autograd(mean_parts, params, num_probes, gen_bar, create_graph=False).detach()
        hess_terms = _sqdist(d, d_bar[None])
        grad_terms = _sqdist(g, g.detach().mean(0)[None])
    penalty = (alpha * hess_terms + beta * grad_terms).sum() / E
    return _result(penalty, hess_terms, grad_terms, return_terms)
