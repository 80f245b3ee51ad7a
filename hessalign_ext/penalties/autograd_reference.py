"""The autograd backend's pieces: double backprop through an explicit head, one domain at a
time, as the paper's reference code does it (the test oracle and the benchmark baseline)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import autograd

from .common import _ce, _flat, _split, _sqrt_safe


def autograd_domain_grads(features, W, b, params, labels, offs, opts):
    """Per domain: (loss, gradient block) by autograd with create_graph (the reference's first pass)."""
    losses, grads = [], []
    for s, t in zip(offs, offs[1:]):
        logits = F.linear(features[s:t], W, b)
        loss = _ce(logits, labels[s:t], opts)
        losses.append(loss)
        grads.append(autograd.grad(loss, params, create_graph=True))
    return losses, grads


def autograd_hvp_by_norm(grad_parts, params) -> torch.Tensor:
    """H g as ‖g‖·∇‖g‖ (the reference code's trick), NaN-free at g = 0."""
    norm = _sqrt_safe(sum(p.pow(2).sum() for p in grad_parts))
    return norm * _flat(autograd.grad(norm, params, create_graph=True))


def _rademacher(gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    v = torch.randint(0, 2, tuple(like.shape), generator=gen, dtype=torch.int64) * 2 - 1
    return v.to(dtype=like.dtype, device=like.device)


def hutchinson_diag_autograd(grad_parts, params, num_probes: Optional[int], generator=None,
                             create_graph: bool = True) -> torch.Tensor:
    """diag(H) of the loss whose gradient (with graph) is ``grad_parts``, by double backprop.

    ``num_probes=K``: the Hutchinson estimate ``(1/K) Σ_k v_k ⊙ ∇(g·v_k)`` with Rademacher
    ``v_k`` drawn from ``generator`` (the reference code's loop). ``num_probes=None``: the
    exact diagonal, one HVP per parameter (cost grows with C·D; meant for small heads).
    Returns a (C, D) block.
    """
    g = _flat(grad_parts)
    has_bias = len(params) == 2
    if num_probes is None:
        flat_g = g.reshape(-1)
        diag = [_flat(autograd.grad(flat_g[k], params, create_graph=create_graph, retain_graph=True)).reshape(-1)[k]
                for k in range(flat_g.numel())]
        return torch.stack(diag).reshape(g.shape)
    if num_probes < 1:
        raise ValueError(f"num_probes must be a positive int or None; got {num_probes}")
    out = torch.zeros_like(g)
    for _ in range(num_probes):
        v = _rademacher(generator, g)
        gv = sum((gp * vp).sum() for gp, vp in zip(grad_parts, _split(v, has_bias)))
        hv = _flat(autograd.grad(gv, params, create_graph=create_graph, retain_graph=True))
        out = out + v * hv
    return out / num_probes


def autograd_full_hessian(grad_parts, params) -> torch.Tensor:
    """The explicit (C·D, C·D) Hessian (with graph); small heads only."""
    g = _flat(grad_parts).reshape(-1)
    rows = [_flat(autograd.grad(g[k], params, create_graph=True, retain_graph=True)).reshape(-1)
            for k in range(g.numel())]
    return torch.stack(rows)
