"""The HGP penalty in row space: its closed form through the Gram matrix of the features.

Every parameter-shaped quantity of HGP is a sum of outer products over the rows,
``X = Σ_i x_i z̃_iᵀ`` with a C-vector ``x_i`` per row and ``z̃_i = [z_i | 1]`` (DESIGN.md §1):

- ``g_e = Σ_{i∈e} r_i z̃_iᵀ`` with ``r_i = c_i p_i − t_i`` (the logits gradient),
- ``H_e V = Σ_{i∈e} H_i (V z̃_i) z̃_iᵀ`` with ``H_i = c_i (diag p_i − p_i p_iᵀ)``,

so ``V z̃_i`` and ``⟨X, Y⟩`` only need ``K = Z̃ Z̃ᵀ`` (N×N): ``g_e z̃_i = Σ_{j∈e} K_ij r_j``,
``⟨Σ x_i z̃_iᵀ, Σ y_j z̃_jᵀ⟩ = Σ_ij K_ij x_i·y_j``. The penalty then costs one N×N×D Gram
GEMM and N×N×C products instead of ten passes of N×C×D and wider through (E, C, D) blocks
(the fused form, :mod:`hessalign_ext.ops.hgp_fused`): on the CPU cheaper where the head is
wide and has many classes for its rows (``choose``: at 3×32 rows, from C = 36 at d = 2048 and
past C = 65 at d = 512); on a GPU, where a small head's step is bound by its launches, the
fused form was the faster at every DomainBed head.

The N×N part runs in float64: the squared distances are differences of near-equal sums when
the domains are aligned, which is where training drives them; float64 there is cheap (N²)
and keeps the penalty exact to the rounding of the inputs. Its gradient is autograd through
these expressions; the Gram matrix has its own backward (one GEMM).
"""

from __future__ import annotations

from typing import List, Optional

import torch
import torch.nn.functional as F

from .common import RowDomains, logits_hvp, loss_rows

_WORK = torch.float64
# method="auto" takes the Gram form when it is the cheaper (``choose``) and
# N <= MAX_ROWS (its N×N float64 buffers).
MAX_ROWS = 8192


def choose(num_rows: int, num_classes: int, width: int, device: torch.device) -> str:
    """The cheaper exact form for N rows, C classes and D = width columns on ``device``.

    CUDA: ``"fused"``. At the 16 DomainBed heads on an H100 (2026-11-26, benchmarks/results/
    2026-11-26_h100) it took 0.70–0.84× the Gram form's time: a small head's step is bound by
    its launches, and the Gram form makes more (132 kernels against 92 at 3×32, d = 512, C = 7).

    CPU: ``"gram"`` (logits and their backward, 3·N·C·D, plus about 6·N²·C + 4·N²·D in float64
    in the Gram space, and more calls) or ``"fused"`` (ten passes of N·C·D to N·4C·D,
    :mod:`hessalign_ext.ops.hgp_fused`). The Gram form where all three hold: D ≥ 512,
    N·(6C + 4D) ≤ 11·C·D and C·D ≥ 4·N². It picks the faster form at all 15 heads of
    benchmarks/results/2026-11-27_cpu_avx2/2026-11-27_cpu_heads_hgp_step.md (one thread of an
    AVX2 EPYC, ``benchmarks/run.py --threads 1 --only hgp_step --rounds 10 --heads ...``; gram /
    fused step time; same-code timings there agree within 12%): 3×32 rows, d = 2048: 1.11 at
    C = 28, 0.96 at 36, 0.73 at 65; d = 512: 2.28 at C = 7, 1.26 at 65, 0.98 at 120, 0.58 at 345;
    5×32 rows, d = 512: 1.38 at C = 65, 0.84 at 200; d = 2048: 1.28 at C = 36, 0.81 at 65; 3×256
    rows: 1.47 at d = 2048, C = 250 and 2.19 at d = 512, C = 700; narrow heads, whose (E, C, D)
    passes are cheap: 1.46 at 3×32, d = 128, C = 345 and 2.73 at 2×32, d = 40, C = 1000. The first
    bound alone (all that decided before the fused form was compiled) took the Gram form at
    d = 512, C = 65 and at the narrow heads."""
    N, C, D = num_rows, num_classes, width
    if device.type == "cuda":
        return "fused"
    gram = N <= MAX_ROWS and D >= 512 and N * (6 * C + 4 * D) <= 11 * C * D and C * D >= 4 * N * N
    return "gram" if gram else "fused"


class _Gram(torch.autograd.Function):
    """``K = Z̃ Z̃ᵀ`` with ``Z̃ = [Z | 1]`` when ``ones`` (a bias), i.e. ``Z Zᵀ + 1``: no augmented
    copy of the features. Returned as a function of both row sets and again as one of the left
    rows only (the right rows detached: the penalty's detached targets); one GEMM each way."""

    @staticmethod
    def forward(ctx, Z: torch.Tensor, ones: bool):
        ctx.save_for_backward(Z)
        K = Z @ Z.t()
        if ones:
            K += 1
        return K, K.clone()

    @staticmethod
    def backward(ctx, dK: torch.Tensor, dK_left: torch.Tensor):
        (Z,) = ctx.saved_tensors
        return (dK + dK.t() + dK_left) @ Z, None


def _within_domains(K: torch.Tensor, domains: RowDomains):
    """``X -> (Σ_{j∈e(i)} K_ij x_j)_i``: one batched GEMM over the diagonal blocks when the
    domains hold equal rows, else one GEMM with the pairs across domains masked out."""
    E, N, n = domains.E, domains.N, domains.n
    if n:
        blocks = torch.stack([K[s:s + n, s:s + n] for s in domains.offs[:-1]])
        return lambda X: torch.bmm(blocks, X.view(E, n, -1)).view(N, -1)
    domain = domains.index
    masked = K * (domain[:, None] == domain[None, :])
    return lambda X: masked @ X


def hgp_terms(features: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], labels: torch.Tensor,
              offs: List[int], opts: dict, mean_target: str):
    """Per-domain ``(‖H_e g_e − T‖², ‖g_e − ḡ‖²)``, each (E,) in float64, differentiable with
    respect to features, weight and bias, with ``T`` and ``ḡ`` detached (penalties.hgp, which checks
    the arguments)."""
    C, E = weight.shape[0], len(offs) - 1
    device = features.device
    p = torch.softmax(F.linear(features, weight, bias).to(_WORK), 1)
    c, t, domains = loss_rows(labels, offs, C, opts, _WORK, device)
    R = c[:, None] * p - t                                   # rows of g_e
    K, K_left = _Gram.apply(features.to(_WORK), bias is not None)
    within = _within_domains(K, domains)
    U = within(R)                                            # g_e z̃_i
    S = logits_hvp(p, c, U)[0]                               # rows of H_e g_e
    with torch.no_grad():
        rho = R / E                                          # rows of ḡ
        g_bar_z = K @ rho                                    # ḡ z̃_i
        tau = (logits_hvp(p, c, g_bar_z)[0] if mean_target == "mean_loss" else S) / E  # rows of T
        norms = torch.stack([(tau * (K @ tau)).sum(), (rho * g_bar_z).sum()])            # ‖T‖², ‖ḡ‖²
    targets_z = K_left @ torch.cat([tau, rho], 1)            # (T z̃_i, ḡ z̃_i), only z̃_i attached
    # ‖X_e − Y‖² = Σ_{i,j∈e} K_ij x_i·x_j − 2 Σ_{i∈e} x_i·(Y z̃_i) + ‖Y‖²
    per_row = torch.stack([(S * (within(S) - 2 * targets_z[:, :C])).sum(1),
                           (R * (U - 2 * targets_z[:, C:])).sum(1)], 1)
    terms = domains.sum(per_row) + norms
    return terms[:, 0], terms[:, 1]
