"""HGP: Hessian-gradient-product alignment (DESIGN.md §2)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import autograd

from . import hgp_gram
from .autograd_reference import autograd_domain_grads, autograd_hvp_by_norm
from .common import _flat, _ops, _params, _result, _sqdev, _sqdist, checked, named_errors

_MEAN_TARGETS = ("mean_loss", "mean_of_domains")
_HGP_METHODS = ("auto", "gram", "fused", "ops")


@named_errors("hgp")
def hgp(features: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], labels: torch.Tensor,
        offsets: torch.Tensor, alpha: float = 1e-4, beta: float = 5e-3, *, backend: str = "kernel",
        mean_target: str = "mean_loss", return_terms: bool = False, ignore_index: int = -100,
        class_weight=None, label_smoothing: float = 0.0, reduction: str = "mean", method: str = "auto"):
    """Hessian-gradient-product penalty (DESIGN.md §2):

    ``(1/E) Σ_e [ α ‖H_e g_e − (H̄ḡ)_detached‖² + β ‖g_e − ḡ_detached‖² ]``

    with ``g_e``, ``H_e`` the gradient and Hessian of domain e's loss over the head's
    weight and bias, ``ḡ`` the gradient of the mean loss ``(1/E) Σ_e L_e`` and
    ``H̄ḡ = (1/E) Σ_e H_e ḡ`` its Hessian times ḡ (``mean_target="mean_loss"``, the
    reference code's target). ``mean_target="mean_of_domains"`` uses ``(1/E) Σ_e H_e g_e``
    instead (not the same vector; documented option).

    The kernel backend has three exact forms (``method``): ``"gram"``, the row-space closed
    form through the features' Gram matrix (:mod:`.hgp_gram`; its N×N part in float64);
    ``"fused"``, the (C, D)-space closed form with a hand-written backward, ten passes over
    the features, forward and backward each one compiled op (:mod:`hessalign_ext.ops.hgp_fused`);
    and ``"ops"``, the composition of the ``head_grad`` and
    ``head_hvp`` ops with autograd through their backwards. ``"auto"`` takes the cheaper of
    ``"gram"`` and ``"fused"`` (``hgp_gram.choose``: by a cost rule on the CPU, the fused form
    on CUDA). Near-aligned domains, the head's
    gradient is a sum over domains that nearly cancels: from float32 inputs the Gram and fused
    forms keep it within 1e-3 of float64; the ops form, like the autograd backend, does not
    (``tests/test_penalties.py::test_hgp_exact_when_domains_align``).

    Returns a scalar (0-dim tensor), or ``(penalty, {"hessian": …, "gradient": …})`` with
    the two unweighted mean terms (detached) when ``return_terms``.
    """
    offs, opts = checked("hgp", features, weight, bias, labels, offsets, backend, ignore_index=ignore_index,
                         class_weight=class_weight, label_smoothing=label_smoothing, reduction=reduction)
    if mean_target not in _MEAN_TARGETS:
        raise ValueError(f"hgp: mean_target must be one of {_MEAN_TARGETS}; got {mean_target!r}")
    if method not in _HGP_METHODS:
        raise ValueError(f"hgp: method must be one of {_HGP_METHODS}; got {method!r}")
    E = len(offs) - 1
    if method == "auto":
        from ..ops._registry import param_shape  # the ops package loads the extension: on first use

        method = hgp_gram.choose(features.shape[0], *param_shape(features, weight, bias), features.device)

    if backend == "kernel" and method == "gram":
        hess_terms, grad_terms = hgp_gram.hgp_terms(features, weight, bias, labels, offs, opts, mean_target)
        penalty = ((alpha * hess_terms + beta * grad_terms).sum() / E).to(features.dtype)
        return _result(penalty, hess_terms.to(features.dtype), grad_terms.to(features.dtype), return_terms)
    if backend == "kernel" and method == "fused":
        penalty, hess_terms, grad_terms = _ops().hgp_fused(features, weight, bias, labels, offs, alpha=alpha, beta=beta,
                                                           mean_loss=mean_target == "mean_loss", **opts)
        return _result(penalty, hess_terms, grad_terms, return_terms)
    if backend == "kernel":
        ops = _ops()
        g = ops.head_grad(features, weight, bias, labels, offsets, **opts)               # (E, C, D)
        hg = ops.head_hvp(features, weight, bias, g, offsets, labels=labels, **opts)      # (E, C, D)
        g_bar = g.detach().mean(0)
        with torch.no_grad():
            if mean_target == "mean_loss":
                target = ops.head_hvp(features.detach(), weight.detach(),
                                      None if bias is None else bias.detach(), g_bar, offsets,
                                      labels=labels, **opts).mean(0)
            else:
                target = hg.detach().mean(0)
    else:
        W, b, params = _params(weight, bias)
        losses, grads = autograd_domain_grads(features, W, b, params, labels, offs, opts)
        g = torch.stack([_flat(p) for p in grads])
        hg = torch.stack([autograd_hvp_by_norm(p, params) for p in grads])
        mean_parts = autograd.grad(torch.stack(losses).mean(), params, create_graph=True)
        g_bar = _flat(mean_parts).detach()
        if mean_target == "mean_loss":
            target = autograd_hvp_by_norm(mean_parts, params).detach()
        else:
            target = hg.detach().mean(0)

    if backend == "kernel":  # the targets that are means: _sqdev (exact gradients near alignment)
        hess_terms = _sqdev(hg) if mean_target == "mean_of_domains" else _sqdist(hg, target[None])
        grad_terms = _sqdev(g)
    else:
        hess_terms = _sqdist(hg, target[None])
        grad_terms = _sqdist(g, g_bar[None])
    penalty = (alpha * hess_terms + beta * grad_terms).sum() / E
    return _result(penalty, hess_terms, grad_terms, return_terms)
