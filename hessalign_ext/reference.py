"""Float64 truth for every op: double-backward autograd through an explicit torch head.

Each function here has the signature and options of the op of the same name in
``hessalign_ext.ops`` and computes the same quantity the slow, obvious way, with no
closed form (DESIGN.md §1 is what the ops implement; this module only trusts
``torch.nn.functional.cross_entropy`` and ``torch.autograd``):

1. The head is built in float64: ``θ = [W | b]`` (``(C, D)``, ``D = d + 1`` with a bias,
   the bias last; ``θ = W`` and ``D = d`` without), ``logits_e = Z̃_e θᵀ`` for the rows
   ``offsets[e] .. offsets[e+1]-1`` of domain ``e``.
2. Domain ``e``'s loss ``L_e`` is ``F.cross_entropy(logits_e, labels_e, weight=class_weight,
   ignore_index=..., label_smoothing=..., reduction=...)``. Without ``labels`` (curvature ops
   only) it is ``Σ_i logsumexp(logits_i)`` divided by ``n_e`` (``reduction="mean"``) or 1
   (``"sum"``): the plain cross-entropy minus a term linear in the logits, so it has the
   Hessian of the plain CE loss for any labels. A domain with no rows, or (under "mean") whose
   kept rows have zero total weight — every row ignored — has ``L_e = 0`` and so zero
   gradient and curvature, where torch's mean would give NaN.
3. ``g_e = ∂L_e/∂θ`` by ``torch.autograd.grad(create_graph=True)``; ``H_e v = ∂(g_e·v)/∂θ``
   by a second ``autograd.grad``, batched over many ``v`` with ``is_grads_batched=True``.
4. ``diag(H_e)`` is ``e_jᵀ H_e e_j`` for every coordinate ``j``: ``C·D`` HVPs per domain
   (batched ``chunk`` at a time). This is exact but costs ``C·D`` backward passes and
   ``O(chunk · n_e · C)`` memory per domain: fine for tests (keep ``C·D`` in the thousands),
   far too slow for production shapes. ``tr(H_e)`` is the sum of that diagonal.
5. Hutchinson estimates use the probes of :mod:`hessalign_ext.probes`, i.e. exactly the
   probes the kernels draw for the same ``seed``: ``(1/K) Σ_k v_k ⊙ H_e v_k`` and
   ``(1/K) Σ_k v_kᵀ H_e v_k``.

Every output is float64 on the device of ``features`` and stays differentiable with respect
to ``features``, ``weight``, ``bias`` (and ``vectors`` for :func:`head_hvp`) whenever those
require grad, so ``torch.autograd.grad`` of a reference output is the truth for the ops'
backward. ``labels``, ``class_weight`` and ``offsets`` are data, never differentiated.
``class_tile`` is accepted for signature compatibility and ignored (the reference never tiles).
Inputs are not validated beyond what the math needs; the ops' checks are tested elsewhere.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import probes as _probes

__all__ = [
    "domain_losses",
    "head_grad",
    "head_hvp",
    "head_hessian_diag",
    "head_hessian_trace",
    "head_hessian_inner",
    "hutchinson_diag",
    "hutchinson_trace",
]

_F64 = torch.float64
# Coordinates (one-hot vectors) per batched HVP when forming the exact diagonal.
_DIAG_CHUNK = 512


class _Options:
    """torch.nn.functional.cross_entropy's options, applied to each domain's rows."""

    def __init__(self, ignore_index, class_weight, label_smoothing, reduction):
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reference: reduction must be 'mean' or 'sum'; got {reduction!r}")
        self.ignore_index = int(ignore_index)
        self.class_weight = None if class_weight is None else class_weight.detach().to(_F64)
        self.label_smoothing = float(label_smoothing)
        self.reduction = reduction


class _Head:
    """The explicit float64 head: augmented features Z̃ and parameters θ = [W | b]."""

    def __init__(self, features, weight, bias, offsets):
        self.device = features.device
        z = features.to(_F64)
        w = weight.to(_F64)
        if bias is not None:
            z = torch.cat([z, z.new_ones(z.shape[0], 1)], dim=1)
            w = torch.cat([w, bias.to(_F64).unsqueeze(1)], dim=1)
        # autograd.grad needs θ in the graph even when neither weight nor bias requires grad.
        self.needs_graph = features.requires_grad or w.requires_grad
        self.theta = w if w.requires_grad else w.detach().requires_grad_(True)
        self.zt = z
        self.C, self.D = self.theta.shape
        off = [int(o) for o in offsets.tolist()]
        self.spans = list(zip(off[:-1], off[1:]))

    @property
    def E(self) -> int:
        return len(self.spans)

    def logits(self, e: int) -> torch.Tensor:
        lo, hi = self.spans[e]
        return self.zt[lo:hi] @ self.theta.T

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        return out if self.needs_graph else out.detach()


def _domain_loss(logits: torch.Tensor, labels: Optional[torch.Tensor], o: _Options) -> torch.Tensor:
    """L_e of one domain (step 2 of the module docstring); 0 for an empty or all-ignored one."""
    zero = logits.sum() * 0.0  # keeps θ in the graph, so gradients are zeros, not None
    n = logits.shape[0]
    if n == 0:
        return zero
    if labels is None:
        lse = torch.logsumexp(logits, dim=1).sum()
        return lse / n if o.reduction == "mean" else lse
    if o.reduction == "mean":
        kept = labels[labels != o.ignore_index]
        denom = kept.numel() if o.class_weight is None else float(o.class_weight[kept].sum())
        if denom == 0:
            return zero
    return F.cross_entropy(
        logits,
        labels,
        weight=o.class_weight,
        ignore_index=o.ignore_index,
        label_smoothing=o.label_smoothing,
        reduction=o.reduction,
    )


def _domain_labels(labels: Optional[torch.Tensor], span) -> Optional[torch.Tensor]:
    return None if labels is None else labels[span[0] : span[1]]


def _per_domain(
    features, weight, bias, offsets, labels, opts: _Options,
    fn: Callable[[_Head, int, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Stacks ``fn(head, e, L_e)`` over domains."""
    if opts.class_weight is not None and labels is None:
        raise ValueError("reference: class_weight needs labels")
    with torch.enable_grad():
        h = _Head(features, weight, bias, offsets)
        outs = [
            fn(h, e, _domain_loss(h.logits(e), _domain_labels(labels, h.spans[e]), opts))
            for e in range(h.E)
        ]
        return h.finish(torch.stack(outs))


def _grad(h: _Head, loss: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, h.theta, create_graph=True)
    return g


def _hvps(h: _Head, g: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """H_e v for a batch ``vectors`` of shape (B, C, D): one batched double backward."""
    if not g.requires_grad:  # L_e was the constant 0 (empty or all-ignored domain)
        return torch.zeros_like(vectors)
    (hv,) = torch.autograd.grad(
        g, h.theta, vectors, create_graph=True, is_grads_batched=True, allow_unused=True
    )
    # None: g does not depend on θ (L_e = 0, but g still depends on requires-grad features).
    return torch.zeros_like(vectors) if hv is None else hv


def _full_hessian(h: _Head, loss: torch.Tensor) -> torch.Tensor:
    """H_e as a (C·D, C·D) matrix: H_e e_j for every coordinate j, ``_DIAG_CHUNK`` at a time."""
    g = _grad(h, loss)
    n = h.C * h.D
    eye = torch.eye(n, dtype=_F64, device=h.device)
    cols = [_hvps(h, g, eye[j0 : j0 + _DIAG_CHUNK].view(-1, h.C, h.D)).reshape(-1, n)
            for j0 in range(0, n, _DIAG_CHUNK)]
    return torch.cat(cols)


def _exact_diag(h: _Head, loss: torch.Tensor) -> torch.Tensor:
    """diag(H_e) as (C, D): e_jᵀ H_e e_j for every coordinate j, ``_DIAG_CHUNK`` at a time."""
    g = _grad(h, loss)
    n = h.C * h.D
    parts = []
    for j0 in range(0, n, _DIAG_CHUNK):
        j1 = min(n, j0 + _DIAG_CHUNK)
        idx = torch.arange(j0, j1, device=h.device)
        basis = torch.zeros(j1 - j0, n, dtype=_F64, device=h.device)
        basis[torch.arange(j1 - j0, device=h.device), idx] = 1.0
        hv = _hvps(h, g, basis.view(-1, h.C, h.D)).reshape(j1 - j0, n)
        parts.append(hv.gather(1, idx.unsqueeze(1)).squeeze(1))
    return torch.cat(parts).view(h.C, h.D)


def _hutchinson_products(h: _Head, loss: torch.Tensor, num_probes: int, seed: int) -> torch.Tensor:
    """v_k ⊙ H_e v_k for the K probes of ``seed``: (K, C, D)."""
    v = _probes.rademacher_probes(seed, num_probes, h.C, h.D).to(h.device)
    return v * _hvps(h, _grad(h, loss), v)


# --------------------------------------------------------------------------------------
# Public reference ops (same signatures as hessalign_ext.ops)
# --------------------------------------------------------------------------------------


def domain_losses(
    features, weight, bias, labels, offsets, *,
    ignore_index=-100, class_weight=None, label_smoothing=0.0, reduction="mean", class_tile=None,
) -> torch.Tensor:
    """(E,) each domain's cross-entropy loss."""
    o = _Options(ignore_index, class_weight, label_smoothing, reduction)
    return _per_domain(features, weight, bias, offsets, labels, o, lambda h, e, loss: loss)


def head_grad(
    features, weight, bias, labels, offsets, *,
    ignore_index=-100, class_weight=None, label_smoothing=0.0, reduction="mean", class_tile=None,
) -> torch.Tensor:
    """(E, C, D) gradient of each domain's loss with respect to θ = [W | b]."""
    o = _Options(ignore_index, class_weight, label_smoothing, reduction)
    return _per_domain(features, weight, bias, offsets, labels, o, lambda h, e, loss: _grad(h, loss))


def head_hvp(
    features, weight, bias, vectors, offsets, *, labels=None,
    ignore_index=-100, class_weight=None, label_smoothing=0.0, reduction="mean", class_tile=None,
) -> torch.Tensor:
    """(E, C, D) H_e v_e; ``vectors`` is (E, C, D) per domain or (C, D) shared by all."""
    o = _Options(ignore_index, class_weight, label_smoothing, reduction)
    v = vectors.to(_F64)

    def fn(h, e, loss):
        ve = v if v.dim() == 2 else v[e]
        return _hvps(h, _grad(h, loss), ve.unsqueeze(0))[0]

    return _per_domain(features, weight, bias, offsets, labels, o, fn)


def head_hessian_diag(
    features, weight, bias, offsets, *, labels=None,
    ignore_index=-100, class_weight=None, label_smoothing=0.0, reduction="mean", class_tile=None,
) -> torch.Tensor:
    """(E, C, D) exact diagonal of each domain's Hessian (C·D HVPs per domain)."""
    o = _Options(ignore_index, class_weight, label_smoothing, reduction)
    return _per_domain(features, weight, bias, offsets, labels, o, lambda h, e, loss: _exact_diag(h, loss))


def head_hessian_trace(
    features, weight, bias, offsets, *, labels=None,
    ignore_index=-100, class_weight=None, label_smoothing=0.0, reduction="mean", class_tile=None,
) -> torch.Tensor:
    """(E,) exact trace of each domain's Hessian: the sum of its exact diagonal."""
    o = _Options(ignore_index, class_weight, label_smoothing, reduction)
    return _per_domain(features, weight, bias, offsets, labels, o, lambda h, e, loss: _exact_diag(h, loss).sum())


def head_hessian_inner(
    features, weight, bias, offsets, *, labels=None,
    ignore_index=-100, class_weight=None, label_smoothing=0.0, reduction="mean", class_tile=None,
) -> torch.Tensor:
    """(E, E) Frobenius inner products ⟨H_a, H_b⟩_F of explicitly formed domain Hessians."""
    o = _Options(ignore_index, class_weight, label_smoothing, reduction)
    hessians = _per_domain(features, weight, bias, offsets, labels, o, lambda h, e, loss: _full_hessian(h, loss))
    return (hessians.unsqueeze(0) * hessians.unsqueeze(1)).sum((2, 3))


def hutchinson_diag(
    features, weight, bias, offsets, num_probes, seed, *, labels=None,
    ignore_index=-100, class_weight=None, label_smoothing=0.0, reduction="mean", class_tile=None,
) -> torch.Tensor:
    """(E, C, D) (1/K) Σ_k v_k ⊙ H_e v_k with the probes of ``probes.rademacher(seed, k, ...)``."""
    o = _Options(ignore_index, class_weight, label_smoothing, reduction)
    return _per_domain(
        features, weight, bias, offsets, labels, o,
        lambda h, e, loss: _hutchinson_products(h, loss, num_probes, seed).mean(0),
    )


def hutchinson_trace(
    features, weight, bias, offsets, num_probes, seed, *, labels=None,
    ignore_index=-100, class_weight=None, label_smoothing=0.0, reduction="mean", class_tile=None,
) -> torch.Tensor:
    """(E,) (1/K) Σ_k v_kᵀ H_e v_k with the probes of ``probes.rademacher(seed, k, ...)``."""
    o = _Options(ignore_index, class_weight, label_smoothing, reduction)
    return _per_domain(
        features, weight, bias, offsets, labels, o,
        lambda h, e, loss: _hutchinson_products(h, loss, num_probes, seed).sum((1, 2)).mean(0),
    )
