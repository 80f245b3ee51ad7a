"""Fishr's per-domain variance of per-sample head gradients, in closed form."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .common import checked, loss_rows, named_errors, softmax_residuals


@named_errors("gradient_variance")
def gradient_variance(features: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      labels: torch.Tensor, offsets: torch.Tensor, *, ignore_index: int = -100,
                      class_weight=None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-domain variance of the per-sample head gradients (Fishr), in closed form. (E, C, D).

    The per-sample gradient of the per-sample loss is ``r_i ⊗ z̃_i`` (``r_i`` the logit
    residual), so ``Var_e[c, j] = mean_i r_ic² z̃_ij² − (mean_i r_ic z̃_ij)²``: two GEMMs, no
    per-sample gradient tensor (DomainBed's Fishr gets them from BackPACK). Rows whose
    label is ``ignore_index`` are left out of their domain's mean.
    """
    offs, opts = checked("gradient_variance", features, weight, bias, labels, offsets, "kernel",
                         ignore_index=ignore_index, class_weight=class_weight, label_smoothing=label_smoothing,
                         reduction="sum")
    N, C = features.shape[0], weight.shape[0]
    logits = F.linear(features, weight, bias)
    c, t, _ = loss_rows(labels, offs, C, opts, logits.dtype, logits.device)  # reduction "sum": per-sample losses
    R = softmax_residuals(logits, c, t)
    keep = (labels != opts["ignore_index"]).to(R.dtype)
    Zt = features if bias is None else torch.cat([features, features.new_ones(N, 1)], dim=1)
    out = []
    for s, t in zip(offs, offs[1:]):
        n = keep[s:t].sum().clamp_min(1)
        r, z = R[s:t], Zt[s:t]
        mean = r.T @ z / n
        second = (r * r).T @ (z * z) / n
        out.append(second - mean * mean)
    return torch.stack(out)
