"""Hessian-alignment penalties (DESIGN.md §2) on a linear softmax head, per domain.

Every penalty takes the head's input ``features`` (N, d), its ``weight`` (C, d) and
``bias`` (C,) or None, ``labels`` (N,) int64 and ``offsets`` (E+1,) int64 (domain e owns
rows ``offsets[e]:offsets[e+1]``), and returns a scalar that is differentiable with respect
to ``features``, ``weight`` and ``bias``. Parameter-shaped quantities are (C, D) blocks,
D = d + 1 with the bias as the last column (D = d without a bias).

Two backends compute the same thing:

- ``backend="kernel"`` (default): the closed-form ops of :mod:`hessalign_ext.ops`, all
  domains in one call each, closed-form backward.
- ``backend="autograd"``: an independent implementation by double backprop through an
  explicit ``F.linear`` head, one domain at a time, as the paper's reference code does
  (HGP's ``H g`` as ``‖g‖·∇‖g‖``, Hutchinson with Rademacher probes and
  ``create_graph=True``). It is the test oracle and the benchmark baseline. Unlike the
  reference code it never returns NaN at a zero gradient: the norm is taken as
  ``sqrt(‖g‖² + tiny)``, and ``sqrt(s+t)·∇sqrt(s+t) = ∇s/2 = H g`` for any ``t > 0``, so
  the product stays exactly ``H g``.

Loss options (keywords of :func:`torch.nn.functional.cross_entropy`, applied per domain):
``ignore_index=-100``, ``class_weight=None``, ``label_smoothing=0.0``, ``reduction="mean"``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import autograd

from hessalign_ext import hgp_gram

__all__ = [
    "hgp",
    "hutchinson",
    "hessian_alignment_full",
    "gradient_variance",
    "head_hessian_inner_torch",
    "hutchinson_diag_autograd",
    "BACKENDS",
]

BACKENDS = ("kernel", "autograd")
_MEAN_TARGETS = ("mean_loss", "mean_of_domains")
_HGP_METHODS = ("auto", "gram", "ops")
_LOSS_OPTION_NAMES = ("ignore_index", "class_weight", "label_smoothing", "reduction")


def _ops():
    from hessalign_ext import ops  # the compiled extension; imported on first use

    return ops


# ----------------------------------------------------------------------------- helpers


def loss_options(ignore_index: int = -100, class_weight=None, label_smoothing: float = 0.0,
                 reduction: str = "mean", *, like: Optional[torch.Tensor] = None) -> dict:
    """Validated loss options as the ops take them (``class_weight`` as a tensor)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum'; got {reduction!r}")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1]; got {label_smoothing}")
    if class_weight is not None and not torch.is_tensor(class_weight):
        class_weight = torch.as_tensor(class_weight, dtype=torch.float64)
    if class_weight is not None and like is not None:
        class_weight = class_weight.to(dtype=like.dtype, device=like.device)
    return {"ignore_index": int(ignore_index), "class_weight": class_weight,
            "label_smoothing": float(label_smoothing), "reduction": reduction}


def _check(features, weight, bias, labels, offsets, backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    if features.dim() != 2:
        raise ValueError(f"features must be (N, d); got shape {tuple(features.shape)}")
    if weight.dim() != 2 or weight.shape[1] != features.shape[1]:
        raise ValueError(f"weight must be (C, d={features.shape[1]}); got shape {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be (C={weight.shape[0]},) or None; got shape {tuple(bias.shape)}")
    if offsets.dim() != 1 or offsets.numel() < 2 or offsets.dtype != torch.int64:
        raise ValueError(f"offsets must be an int64 (E+1,) tensor with E >= 1; got "
                         f"{offsets.dtype} of shape {tuple(offsets.shape)}")
    offs = offsets.tolist()
    if offs[0] != 0 or offs[-1] != features.shape[0] or any(b < a for a, b in zip(offs, offs[1:])):
        raise ValueError(f"offsets must be sorted, start at 0 and end at N={features.shape[0]}; got {offs}")
    if labels is not None and tuple(labels.shape) != (features.shape[0],):
        raise ValueError(f"labels must be (N={features.shape[0]},); got shape {tuple(labels.shape)}")
    return offs


def _params(weight, bias):
    """Tensors to differentiate against: the inputs themselves when they require grad."""
    W = weight if weight.requires_grad else weight.detach().requires_grad_(True)
    b = None
    if bias is not None:
        b = bias if bias.requires_grad else bias.detach().requires_grad_(True)
    return W, b, [W] if b is None else [W, b]


def _flat(parts) -> torch.Tensor:
    """(grad_W, grad_b) -> one (C, D) block, bias as the last column."""
    if len(parts) == 1:
        return parts[0]
    return torch.cat([parts[0], parts[1][:, None]], dim=1)


def _split(block: torch.Tensor, has_bias: bool):
    return [block[:, :-1], block[:, -1]] if has_bias else [block]


def _ce(logits, labels, opts) -> torch.Tensor:
    return F.cross_entropy(logits, labels, weight=opts["class_weight"], ignore_index=opts["ignore_index"],
                           label_smoothing=opts["label_smoothing"], reduction=opts["reduction"])


def _sqrt_safe(sq: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(sq + torch.finfo(sq.dtype).tiny)


def _sqdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ over the parameter block of (a - b)², per leading index."""
    return (a - b).pow(2).flatten(1).sum(1)


def _result(penalty, hess_terms, grad_terms, return_terms):
    if not return_terms:
        return penalty
    return penalty, {"hessian": hess_terms.detach().mean(), "gradient": grad_terms.detach().mean()}


# --------------------------------------------------------------------- autograd pieces


def _autograd_domain_grads(features, W, b, params, labels, offs, opts):
    """Per domain: (loss, gradient block) by autograd with create_graph (the reference's first pass)."""
    losses, grads = [], []
    for s, t in zip(offs, offs[1:]):
        logits = F.linear(features[s:t], W, b)
        loss = _ce(logits, labels[s:t], opts)
        losses.append(loss)
        grads.append(autograd.grad(loss, params, create_graph=True))
    return losses, grads


def _autograd_hvp_by_norm(grad_parts, params) -> torch.Tensor:
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


def _autograd_full_hessian(grad_parts, params) -> torch.Tensor:
    """The explicit (C·D, C·D) Hessian (with graph); small heads only."""
    g = _flat(grad_parts).reshape(-1)
    rows = [_flat(autograd.grad(g[k], params, create_graph=True, retain_graph=True)).reshape(-1)
            for k in range(g.numel())]
    return torch.stack(rows)


# ------------------------------------------------------------------------------- HGP


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

    The kernel backend has two exact forms (``method``): ``"gram"``, the row-space closed
    form through the features' Gram matrix (:mod:`hessalign_ext.hgp_gram`; its N×N part in
    float64), and ``"ops"``, the (E, C, D) blocks of ``head_grad`` and ``head_hvp``.
    ``"auto"`` takes the one with fewer multiply-adds (``hgp_gram.choose``).

    Returns a scalar (0-dim tensor), or ``(penalty, {"hessian": …, "gradient": …})`` with
    the two unweighted mean terms (detached) when ``return_terms``.
    """
    offs = _check(features, weight, bias, labels, offsets, backend)
    if labels is None:
        raise ValueError("hgp: labels are required")
    if mean_target not in _MEAN_TARGETS:
        raise ValueError(f"mean_target must be one of {_MEAN_TARGETS}; got {mean_target!r}")
    if method not in _HGP_METHODS:
        raise ValueError(f"method must be one of {_HGP_METHODS}; got {method!r}")
    opts = loss_options(ignore_index, class_weight, label_smoothing, reduction, like=features)
    E = len(offs) - 1
    if method == "auto":
        method = hgp_gram.choose(features.shape[0], weight.shape[0], features.shape[1] + (bias is not None),
                                 hgp_gram.float64_cost(features.device))

    if backend == "kernel" and method == "gram":
        hess_terms, grad_terms = hgp_gram.hgp_terms(features, weight, bias, labels, offs, opts, mean_target)
        penalty = ((alpha * hess_terms + beta * grad_terms).sum() / E).to(features.dtype)
        return _result(penalty, hess_terms.to(features.dtype), grad_terms.to(features.dtype), return_terms)
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
        losses, grads = _autograd_domain_grads(features, W, b, params, labels, offs, opts)
        g = torch.stack([_flat(p) for p in grads])
        hg = torch.stack([_autograd_hvp_by_norm(p, params) for p in grads])
        mean_parts = autograd.grad(torch.stack(losses).mean(), params, create_graph=True)
        g_bar = _flat(mean_parts).detach()
        if mean_target == "mean_loss":
            target = _autograd_hvp_by_norm(mean_parts, params).detach()
        else:
            target = hg.detach().mean(0)

    hess_terms = _sqdist(hg, target[None])
    grad_terms = _sqdist(g, g_bar[None])
    penalty = (alpha * hess_terms + beta * grad_terms).sum() / E
    return _result(penalty, hess_terms, grad_terms, return_terms)


# ------------------------------------------------------------------------ Hutchinson


def _mean_seed(seed: int) -> int:
    """Seed of the mean loss's probes: independent of the per-domain probes (as in the reference)."""
    return (int(seed) * 0x9E3779B1 + 0x7F4A7C15) % (2**62)


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
    offs = _check(features, weight, bias, labels, offsets, backend)
    if labels is None:
        raise ValueError("hutchinson: labels are required")
    if num_probes is not None and (int(num_probes) != num_probes or num_probes < 1):
        raise ValueError(f"num_probes must be a positive int or None; got {num_probes}")
    opts = loss_options(ignore_index, class_weight, label_smoothing, reduction, like=features)
    E = len(offs) - 1

    if backend == "kernel":
        ops = _ops()
        g = ops.head_grad(features, weight, bias, labels, offsets, **opts)
        if num_probes is None:
            d = ops.head_hessian_diag(features, weight, bias, offsets, labels=labels, **opts)
            d_bar = d.detach().mean(0)
        else:
            d = ops.hutchinson_diag(features, weight, bias, offsets, int(num_probes), int(seed), labels=labels, **opts)
            with torch.no_grad():
                d_bar = ops.hutchinson_diag(features.detach(), weight.detach(),
                                            None if bias is None else bias.detach(), offsets, int(num_probes),
                                            _mean_seed(seed), labels=labels, **opts).mean(0)
    else:
        W, b, params = _params(weight, bias)
        losses, grads = _autograd_domain_grads(features, W, b, params, labels, offs, opts)
        g = torch.stack([_flat(p) for p in grads])
        gen = torch.Generator().manual_seed(int(seed))
        d = torch.stack([hutchinson_diag_autograd(p, params, num_probes, gen) for p in grads])
        mean_parts = autograd.grad(torch.stack(losses).mean(), params, create_graph=True)
        if num_probes is None:
            d_bar = d.detach().mean(0)
        else:
            gen_bar = torch.Generator().manual_seed(_mean_seed(seed))
            d_bar = hutchinson_diag_autograd(mean_parts, params, num_probes, gen_bar, create_graph=False).detach()
    g_bar = g.detach().mean(0)

    hess_terms = _sqdist(d, d_bar[None])
    grad_terms = _sqdist(g, g_bar[None])
    penalty = (alpha * hess_terms + beta * grad_terms).sum() / E
    return _result(penalty, hess_terms, grad_terms, return_terms)


# ------------------------------------------------- whole-Hessian alignment (Frobenius)


def _coefficients(logits: torch.Tensor, labels, offs, opts) -> torch.Tensor:
    """Per-row Hessian coefficient c_i of DESIGN.md §1 (1/n_e without loss options)."""
    N, C = logits.shape
    dev, dt = logits.device, logits.dtype
    if labels is None:
        keep = torch.ones(N, dtype=dt, device=dev)
        w_y = keep
        w_sum = float(C) if opts["class_weight"] is None else opts["class_weight"].sum()
    else:
        keep = (labels != opts["ignore_index"]).to(dt)
        w = opts["class_weight"]
        safe = torch.where(labels == opts["ignore_index"], torch.zeros_like(labels), labels)
        w_y = keep if w is None else w[safe] * keep
        w_sum = float(C) if w is None else w.sum()
    eps = opts["label_smoothing"]
    c = (1 - eps) * w_y + eps * w_sum / C * keep
    out = torch.empty_like(c)
    for s, t in zip(offs, offs[1:]):
        denom = w_y[s:t].sum() if opts["reduction"] == "mean" else 1.0
        out[s:t] = c[s:t] / denom
    return out


def head_hessian_inner_torch(features: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                             offsets: torch.Tensor, *, labels: Optional[torch.Tensor] = None,
                             method: str = "auto", ignore_index: int = -100, class_weight=None,
                             label_smoothing: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """E×E matrix of Frobenius inner products ⟨H_a, H_b⟩_F of the domains' head Hessians.

    Plain torch, differentiable by autograd, no Hessian formed (DESIGN.md §1). Two exact
    routes, picked by cost when ``method="auto"``:

    - ``"samples"``: ``Σ_{i∈a, j∈b} c_i c_j T_ij (z̃_i·z̃_j)²`` with
      ``T = P_aP_bᵀ − P_a(P_b⊙P_b)ᵀ − (P_a⊙P_a)P_bᵀ + (P_aP_bᵀ)⊙(P_aP_bᵀ)``; O(n_a n_b (C+D)),
      memory n_a·n_b per pair.
    - ``"features"``: ``Σ_{c,c'} ⟨M^a_{cc'}, M^b_{cc'}⟩`` with the D×D blocks
      ``M^e_{cc'} = Z̃_eᵀ diag(c_i A_i[c,c']) Z̃_e``; O(N C² D²), memory E·C²·D². Cheaper for
      few classes and large domains (ColoredMNIST full batch).

    ``labels`` only carry the loss options (as for the curvature ops).
    """
    offs = _check(features, weight, bias, labels, offsets, "kernel")
    if method not in ("auto", "samples", "features"):
        raise ValueError(f"method must be 'auto', 'samples' or 'features'; got {method!r}")
    opts = loss_options(ignore_index, class_weight, label_smoothing, reduction, like=features)
    E = len(offs) - 1
    N, C = features.shape[0], weight.shape[0]
    logits = F.linear(features, weight, bias)
    P = logits.softmax(dim=1)
    c = _coefficients(logits, labels, offs, opts)
    Zt = features if bias is None else torch.cat([features, features.new_ones(N, 1)], dim=1)
    D = Zt.shape[1]
    if method == "auto":
        cost_samples = N * N * (C + D)
        cost_features = N * C * (C + 1) // 2 * D * D + E * E * C * C * D * D
        fits = E * C * C * D * D <= 2**25
        method = "features" if fits and cost_features < cost_samples else "samples"

    if method == "features":
        blocks = []
        eye = torch.eye(C, dtype=P.dtype, device=P.device)
        for s, t in zip(offs, offs[1:]):
            p, z, ce = P[s:t], Zt[s:t], c[s:t]
            # A_i[c,c'] = p_c δ_cc' − p_c p_c'  →  coefficient per row and class pair
            a = (p[:, :, None] * eye - p[:, :, None] * p[:, None, :]) * ce[:, None, None]   # (n, C, C)
            blocks.append(torch.einsum("nkl,nd,nf->kldf", a, z, z))                     # (C, C, D, D)
        M = torch.stack(blocks).flatten(1)                                               # (E, C²D²)
        return M @ M.T

    rows = []
    for sa, ta in zip(offs, offs[1:]):
        row = []
        for sb, tb in zip(offs, offs[1:]):
            pa, pb = P[sa:ta], P[sb:tb]
            pp = pa @ pb.T
            T = pp - pa @ (pb * pb).T - (pa * pa) @ pb.T + pp * pp
            K = (Zt[sa:ta] @ Zt[sb:tb].T).pow(2)
            row.append((c[sa:ta][:, None] * c[sb:tb][None, :] * T * K).sum())
        rows.append(torch.stack(row))
    return torch.stack(rows)


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
    the closed form keeps them attached. ``backend="autograd"`` forms the Hessians
    explicitly (small heads only; the oracle).
    """
    offs = _check(features, weight, bias, labels, offsets, backend)
    opts = loss_options(ignore_index, class_weight, label_smoothing, reduction, like=features)
    E = len(offs) - 1
    if backend == "kernel":
        ops = _ops()
        g = ops.head_grad(features, weight, bias, labels, offsets, **opts)
        inner = getattr(ops, "head_hessian_inner", head_hessian_inner_torch)
        G = inner(features, weight, bias, offsets, labels=labels, **opts)
        hess_terms = torch.diagonal(G) - 2.0 / E * G.sum(1) + G.sum() / E**2
    else:
        W, b, params = _params(weight, bias)
        losses, grads = _autograd_domain_grads(features, W, b, params, labels, offs, opts)
        g = torch.stack([_flat(p) for p in grads])
        H = torch.stack([_autograd_full_hessian(p, params) for p in grads])
        hess_terms = (H - H.mean(0, keepdim=True)).pow(2).flatten(1).sum(1)
    grad_terms = _sqdist(g, g.mean(0, keepdim=True))
    penalty = (alpha * hess_terms + beta * grad_terms).sum() / E
    return _result(penalty, hess_terms, grad_terms, return_terms)


# --------------------------------------------------------------- Fishr (closed form)


def gradient_variance(features: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      labels: torch.Tensor, offsets: torch.Tensor, *, ignore_index: int = -100,
                      class_weight=None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-domain variance of the per-sample head gradients (Fishr), in closed form. (E, C, D).

    The per-sample gradient of the per-sample loss is ``r_i ⊗ z̃_i`` (``r_i`` the logit
    residual), so ``Var_e[c, j] = mean_i r_ic² z̃_ij² − (mean_i r_ic z̃_ij)²``: two GEMMs, no
    per-sample gradient tensor (DomainBed's Fishr gets them from BackPACK). Rows whose
    label is ``ignore_index`` are left out of their domain's mean.
    """
    offs = _check(features, weight, bias, labels, offsets, "kernel")
    opts = loss_options(ignore_index, class_weight, label_smoothing, "sum", like=features)
    N, C = features.shape[0], weight.shape[0]
    logits = F.linear(features, weight, bias)
    P = logits.softmax(dim=1)
    keep = (labels != opts["ignore_index"]).to(P.dtype)
    safe = torch.where(labels == opts["ignore_index"], torch.zeros_like(labels), labels)
    w = opts["class_weight"]
    w_y = keep if w is None else w[safe] * keep
    w_all = torch.ones(C, dtype=P.dtype, device=P.device) if w is None else w
    eps = opts["label_smoothing"]
    onehot = F.one_hot(safe, C).to(P.dtype)
    coef = (1 - eps) * w_y + eps * w_all.sum() / C * keep
    R = coef[:, None] * P - (1 - eps) * w_y[:, None] * onehot - (eps / C) * w_all[None, :] * keep[:, None]
    Zt = features if bias is None else torch.cat([features, features.new_ones(N, 1)], dim=1)
    out = []
    for s, t in zip(offs, offs[1:]):
        n = keep[s:t].sum().clamp_min(1)
        r, z = R[s:t], Zt[s:t]
        mean = r.T @ z / n
        second = (r * r).T @ (z * z) / n
        out.append(second - mean * mean)
    return torch.stack(out)
