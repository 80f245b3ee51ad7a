"""The HGP penalty in parameter space with a hand-written backward: ten passes over the features.

The ``"ops"`` form composes ``head_grad`` and two ``head_hvp`` calls and lets autograd chain
their backwards: about twenty products of the features with a C-wide matrix. This form
writes the whole step out (DESIGN.md §1, §2), with ``z̃_i = [z_i | 1]``, ``H_i = c_i (diag p_i −
p_i p_iᵀ)`` and ``r_i = c_i p_i − t_i`` (``loss_rows``):

forward (5 passes)
  logits ``Θ z̃_i``; ``g_e = Σ_{i∈e} r_i z̃_iᵀ``; ``ū_i = ḡ z̃_i`` and ``δu_i = (g_e − ḡ) z̃_i``;
  ``H_e ḡ`` and ``H_e (g_e − ḡ)`` in one 2C-wide pass, from ``H_i ū_i`` and ``H_i δu_i``.

backward (5 passes), with ``A_e = ∂P/∂(H_e g_e)`` and ``a_i = A_e z̃_i``
  ``⟨A_e, H_e g_e⟩ = Σ_{i∈e} a_iᵀ H_i u_i`` (``u_i = ū_i + δu_i``), so ``∂/∂g_e = Σ_{i∈e}
  (H_i a_i) z̃_iᵀ``, ``∂/∂z̃_i = A_eᵀ s_i + g_eᵀ H_i a_i`` (``s_i = H_i u_i``) and ``∂/∂p_i =
  c_i (a_i⊙u_i − a_i (p_i·u_i) − u_i (p_i·a_i))``; with ``G_e`` the whole gradient of ``g_e``,
  ``q_i = G_e z̃_i`` gives ``∂/∂p_i += c_i q_i`` and ``∂/∂z̃_i += G_eᵀ r_i``; the logits'
  gradient then gives ``∂Θ`` (one pass) and ``∂z̃_i += Θᵀ ∂l_i``, all four feature terms in
  one 4C-wide pass.

Both targets, ``ḡ`` and ``T``, are detached, as in the other forms. Everything runs in the
features' dtype, yet near-aligned domains keep their accuracy: ``H_e g_e − T`` is formed as
``H_e (g_e − ḡ)`` plus the centred ``H_e ḡ`` (``H̄ḡ = mean_e H_e ḡ``), never as the difference
of two separately rounded blocks, so the head's gradient, a sum over domains that nearly
cancels there, stays within 1e-3 of float64 (``test_hgp_exact_when_domains_align``).
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .common import RowDomains, centred, check_labels, logits_hvp, loss_rows


class _Rows:
    """Products of per-domain (k, D) blocks with the rows of their domain: one batched GEMM when
    the domains hold equal rows, one GEMM per domain otherwise. The bias column of a block
    multiplies the implicit 1 of ``z̃_i``: no augmented copy of the features."""

    def __init__(self, X: torch.Tensor, domains: RowDomains, bias: bool):
        self.X, self.offs, self.bias = X, domains.offs, bias
        self.E, self.N, self.n, self.d = domains.E, domains.N, domains.n, X.shape[1]

    def spans(self):
        return zip(self.offs, self.offs[1:])

    def apply(self, M: torch.Tensor) -> torch.Tensor:
        """(E, k, D) blocks -> (N, k) rows ``M_{e(i)} z̃_i``."""
        d, k = self.d, M.shape[1]
        if self.n:
            X = self.X.view(self.E, self.n, d)
            Mt = M[:, :, :d].transpose(1, 2)
            out = torch.baddbmm(M[:, None, :, d], X, Mt) if self.bias else torch.bmm(X, Mt)
            return out.view(self.N, k)
        out = self.X.new_empty(self.N, k)
        for e, (s, t) in enumerate(self.spans()):
            if self.bias:
                torch.addmm(M[e, :, d], self.X[s:t], M[e, :, :d].t(), out=out[s:t])
            else:
                torch.mm(self.X[s:t], M[e].t(), out=out[s:t])
        return out

    def outer(self, R: torch.Tensor) -> torch.Tensor:
        """(N, k) rows -> (E, k, D) blocks ``Σ_{i∈e} r_i z̃_iᵀ``, written in place (a concatenated
        bias column would copy the blocks once more)."""
        d, k = self.d, R.shape[1]
        out = self.X.new_empty(self.E, k, d + self.bias)
        if self.n:
            Rt = R.view(self.E, self.n, k).transpose(1, 2)
            torch.bmm(Rt, self.X.view(self.E, self.n, d), out=out[:, :, :d])
            if self.bias:
                torch.sum(Rt, 2, out=out[:, :, d])
            return out
        for e, (s, t) in enumerate(self.spans()):
            torch.mm(R[s:t].t(), self.X[s:t], out=out[e, :, :d])
            if self.bias:
                torch.sum(R[s:t], 0, out=out[e, :, d])
        return out

    def weighted_sum(self, L: List[torch.Tensor], M: List[torch.Tensor]) -> torch.Tensor:
        """(N, k_j) rows and (E, k_j, d) blocks -> (N, d) rows ``Σ_j M_{j,e(i)}ᵀ l_{j,i}``: one
        GEMM over the concatenated blocks where copying them costs less than a pass over the
        (N, d) output per extra term, else one GEMM per term accumulating into the output."""
        E, N, d = self.E, self.N, self.d
        if sum(m.shape[1] for m in M) * E <= (len(M) - 1) * N:
            L, M = [torch.cat(L, 1)], [torch.cat(M, 1)]
        out = self.X.new_empty(N, d)
        if self.n:
            out3 = out.view(E, self.n, d)
            torch.bmm(L[0].view(E, self.n, -1), M[0], out=out3)
            for l, m in zip(L[1:], M[1:]):
                out3.baddbmm_(l.view(E, self.n, -1), m)
            return out
        for e, (s, t) in enumerate(self.spans()):
            torch.mm(L[0][s:t], M[0][e], out=out[s:t])
            for l, m in zip(L[1:], M[1:]):
                out[s:t].addmm_(l[s:t], m[e])
        return out


class _FusedHGP(torch.autograd.Function):
    """(penalty, per-domain Hessian terms, per-domain gradient terms); only the penalty has a gradient."""

    @staticmethod
    def forward(ctx, features, weight, bias, c, t, domains, alpha, beta, mean_loss):
        E, C = domains.E, weight.shape[0]
        features = features.contiguous()
        rows = _Rows(features, domains, bias is not None)
        p = torch.softmax(F.linear(features, weight, bias), 1)
        R = c[:, None] * p - t
        g = rows.outer(R)                                        # g_e
        g_bar = g.mean(0)
        g_diff = centred(g, g_bar)                              # g_e − ḡ
        # u_i = ū_i + (g_e − ḡ) z̃_i: one rounding of ū_i shared by H_e g_e and the target, whose
        # difference is then formed from small terms (separate roundings of u_i and ū_i would
        # dominate it where the domains align).
        g_bar_w, g_bar_b = (g_bar[:, :-1], g_bar[:, -1]) if bias is not None else (g_bar, None)
        U_bar, U_diff = F.linear(features, g_bar_w, g_bar_b), rows.apply(g_diff)
        S_pair, m_pair = logits_hvp(p, c, torch.cat([U_bar, U_diff], 1))
        S_bar, S_diff = S_pair.split(C, 1)
        U, S, pu = U_bar + U_diff, S_bar + S_diff, m_pair.sum(1, keepdim=True)  # pu = p_i · u_i
        h_bar, h_gap = rows.outer(S_pair).split(C, 1)                 # H_e ḡ, H_e (g_e − ḡ)
        # H_e g_e − T with T = H̄ḡ = mean_e H_e ḡ (mean_loss) or mean_e H_e g_e (mean_of_domains)
        h_diff = centred(h_bar).add_(h_gap if mean_loss else centred(h_gap))
        hess_terms = torch.linalg.vector_norm(h_diff, dim=(1, 2)).square()
        grad_terms = torch.linalg.vector_norm(g_diff, dim=(1, 2)).square()
        penalty = (hess_terms * (alpha / E)).add_(grad_terms, alpha=beta / E).sum()
        ctx.save_for_backward(features, weight, bias, c, p, R, U, S, pu, g, h_diff, g_diff)
        ctx.domains, ctx.alpha, ctx.beta = domains, alpha, beta
        ctx.mark_non_differentiable(hess_terms, grad_terms)
        return penalty, hess_terms, grad_terms

    @staticmethod
    @once_differentiable
    def backward(ctx, d_penalty, _hess_terms, _grad_terms):
        features, weight, bias, c, p, R, U, S, pu, g, h_diff, g_diff = ctx.saved_tensors
        E, d = ctx.domains.E, features.shape[1]
        rows = _Rows(features, ctx.domains, bias is not None)
        A = h_diff * (d_penalty * (2.0 * ctx.alpha / E))        # ∂P/∂(H_e g_e)
        a = rows.apply(A)
        h, pa = logits_hvp(p, c, a)                             # H_i a_i, p_i · a_i
        G = rows.outer(h).addcmul_(g_diff, d_penalty * (2.0 * ctx.beta / E))  # ∂P/∂g_e
        # ∂P/∂p_i = c_i (a_i ⊙ (u_i − p_i·u_i) − u_i (p_i·a_i) + q_i), and the softmax's Jacobian
        # times c_i is H_i: ∂P/∂logits_i = H_i (∂P/∂p_i / c_i)
        dp = torch.addcmul(rows.apply(G), a, U - pu).addcmul_(U, pa, value=-1)
        dl, _ = logits_hvp(p, c, dp)
        d_features = d_weight = d_bias = None
        if ctx.needs_input_grad[0]:
            d_features = rows.weighted_sum([S, h, R, dl], [A[:, :, :d], g[:, :, :d], G[:, :, :d],
                                                           weight.expand(E, *weight.shape)])
        if ctx.needs_input_grad[1]:
            d_weight = dl.t() @ features
        if bias is not None and ctx.needs_input_grad[2]:
            d_bias = dl.sum(0)
        return d_features, d_weight, d_bias, None, None, None, None, None, None


def hgp_fused(features: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], labels: torch.Tensor,
              offs: List[int], opts: dict, alpha: float, beta: float, mean_target: str):
    """(penalty, per-domain Hessian terms (E,), per-domain gradient terms (E,)), the penalty
    differentiable with respect to features, weight and bias (penalties.hgp)."""
    for name, tensor in (("weight", weight), ("bias", bias)):
        if tensor is not None and (tensor.dtype, tensor.device) != (features.dtype, features.device):
            raise ValueError(f"hgp: {name} must have the features' dtype and device ({features.dtype}, "
                             f"{features.device}); got {tensor.dtype} on {tensor.device}")
    C = weight.shape[0]
    check_labels("hgp", labels, C, opts)
    c, t, domains = loss_rows(labels, offs, C, opts, features.dtype, features.device)
    return _FusedHGP.apply(features, weight, bias, c, t, domains, float(alpha), float(beta), mean_target == "mean_loss")
