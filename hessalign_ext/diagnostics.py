"""The Hessian-gap diagnostic: ``‖H_a − H_b‖₂`` between two domains' head Hessians.

The paper bounds the transfer measure between two domains by the spectral norm of the
difference of their head Hessians (DESIGN.md §2). ``H_a − H_b`` is symmetric and
indefinite, so its spectral norm is its largest eigenvalue in absolute value; it is
estimated here by Lanczos (default) or power iteration on matrix-vector products
``(H_a − H_b) v`` computed in closed form by ``ops.head_hvp``: no Hessian is formed, and
one product costs two GEMMs over the two domains' rows.
"""

from __future__ import annotations

import itertools
from typing import Callable, Dict, Iterable, Optional, Tuple

import torch

__all__ = ["lanczos_spectral_norm", "power_spectral_norm", "hessian_gap", "hessian_gaps"]

METHODS = ("lanczos", "power")


def _start_vector(dim: int, like: torch.Tensor, seed: int) -> torch.Tensor:
    v = torch.randn(dim, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
    v = v.to(dtype=like.dtype, device=like.device)
    return v / v.norm()


def lanczos_spectral_norm(matvec: Callable[[torch.Tensor], torch.Tensor], dim: int, like: torch.Tensor,
                          num_iters: int = 30, seed: int = 0) -> float:
    """Largest |eigenvalue| of the symmetric operator ``matvec`` on R^dim, by Lanczos.

    ``num_iters`` steps build a Krylov basis (fully reorthogonalized, because plain
    Lanczos loses orthogonality as soon as the top eigenvalue converges and then reports
    it twice); the answer is the largest |eigenvalue| of the tridiagonal projection. It is
    exact once ``num_iters >= dim`` or the Krylov space becomes invariant, and a lower
    bound that converges fast otherwise. ``like`` gives dtype and device.
    """
    q = _start_vector(dim, like, seed)
    basis, alphas, betas = [q], [], []
    scale = 0.0  # running estimate of ‖A‖, to judge when a residual is rounding noise
    for _ in range(min(int(num_iters), dim)):
        w = matvec(basis[-1])
        alphas.append(torch.dot(w, basis[-1]))
        Q = torch.stack(basis)
        w = w - Q.T @ (Q @ w)
        w = w - Q.T @ (Q @ w)  # twice is enough (Kahan–Parlett) in floating point
        beta = w.norm()
        scale = max(scale, float(alphas[-1].abs()), float(beta))
        if float(beta) <= 1e-12 * scale:
            break  # the Krylov space is invariant: the projection's eigenvalues are exact
        betas.append(beta)
        basis.append(w / beta)
    k = len(alphas)
    T = torch.diag(torch.stack(alphas).to(torch.float64))
    if k > 1:
        off = torch.stack(betas[: k - 1]).to(torch.float64)
        T = T + torch.diag(off, 1) + torch.diag(off, -1)
    return float(torch.linalg.eigvalsh(T.cpu()).abs().max())


def power_spectral_norm(matvec: Callable[[torch.Tensor], torch.Tensor], dim: int, like: torch.Tensor,
                        num_iters: int = 100, seed: int = 0) -> float:
    """Largest |eigenvalue| of the symmetric operator ``matvec``, by power iteration.

    ``‖A v_k‖`` with ``v_k = A^k v_0 / ‖A^k v_0‖`` converges to the spectral norm at the
    rate of the ratio of the two largest |eigenvalues| (also when ``λ`` and ``−λ`` tie:
    ``v_k`` then oscillates inside their eigenspace, its norm under ``A`` does not).
    """
    v = _start_vector(dim, like, seed)
    norm = 0.0
    for _ in range(int(num_iters)):
        w = matvec(v)
        norm = float(w.norm())
        if norm == 0.0:
            break
        v = w / norm
    return norm


def hessian_gap(features: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], offsets,
                a: int, b: int, *, labels: Optional[torch.Tensor] = None, method: str = "lanczos",
                num_iters: int = 30, seed: int = 0, **loss_options) -> float:
    """``‖H_a − H_b‖₂`` of domains ``a`` and ``b`` (rows ``offsets[e]:offsets[e+1]``).

    ``loss_options`` (ignore_index, class_weight, label_smoothing, reduction) and ``labels``
    define the loss whose Hessians are compared, as for the ops. Not differentiable (a
    diagnostic): inputs are detached.
    """
    return hessian_gaps(features, weight, bias, offsets, [(a, b)], labels=labels, method=method,
                        num_iters=num_iters, seed=seed, **loss_options)[(a, b)]


def hessian_gaps(features: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], offsets,
                 pairs: Optional[Iterable[Tuple[int, int]]] = None, *, labels: Optional[torch.Tensor] = None,
                 method: str = "lanczos", num_iters: int = 30, seed: int = 0,
                 **loss_options) -> Dict[Tuple[int, int], float]:
    """``{(a, b): ‖H_a − H_b‖₂}`` for ``pairs`` of domains (default: every pair a < b)."""
    from . import ops
    from .ops._registry import param_shape

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    offs = [int(o) for o in (offsets.tolist() if torch.is_tensor(offsets) else offsets)]
    E = len(offs) - 1
    pairs = list(itertools.combinations(range(E), 2) if pairs is None else pairs)
    for a, b in pairs:
        if not (0 <= a < E and 0 <= b < E):
            raise ValueError(f"pair ({a}, {b}) names a domain outside 0..{E - 1}")
    estimate = lanczos_spectral_norm if method == "lanczos" else power_spectral_norm
    z = features.detach()
    W = weight.detach()
    bb = None if bias is None else bias.detach()
    C, D = param_shape(z, W, bias)
    gaps = {}
    with torch.no_grad():
        for a, b in pairs:
            rows = torch.cat([torch.arange(offs[a], offs[a + 1]), torch.arange(offs[b], offs[b + 1])])
            rows = rows.to(z.device)
            sub = torch.tensor([0, offs[a + 1] - offs[a], len(rows)], dtype=torch.int64)
            sub_labels = None if labels is None else labels[rows]

            def matvec(v, z_ab=z[rows], sub=sub, sub_labels=sub_labels):
                hv = ops.head_hvp(z_ab, W, bb, v.reshape(C, D), sub, labels=sub_labels, **loss_options)
                return (hv[0] - hv[1]).reshape(-1)

            gaps[(a, b)] = estimate(matvec, C * D, z, num_iters=num_iters, seed=seed)
    return gaps
