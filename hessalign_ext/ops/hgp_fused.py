"""hgp_fused: the HGP penalty step in parameter space with its hand-written backward, each one
op (kernels: csrc/host/hgp_fused.h, with the derivation; csrc/cpu/hgp_fused_cpu.cpp,
csrc/cuda/hgp_fused_cuda.cu), and its fake kernels. Its autograd is csrc/autograd.cpp's: the
node keeps the forward's saved list for the backward op. ``penalties.hgp`` with
``method="fused"`` calls it."""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from ._registry import ce_args, param_shape, register_fake


def hgp_fused(features, weight, bias, labels, offsets: Union[Sequence[int], torch.Tensor], *, alpha: float,
              beta: float, mean_loss: bool = True, ignore_index=-100, class_weight=None, label_smoothing=0.0,
              reduction="mean"):
    """``(penalty, hess_terms, grad_terms)`` of HGP (DESIGN.md §2):
    ``penalty = (1/E) Σ_e α ‖H_e g_e − T‖² + β ‖g_e − ḡ‖²`` with ``g_e``, ``H_e`` the gradient
    and Hessian of domain e's loss over ``[W | b]``, ``ḡ = mean_e g_e`` and the target ``T =
    mean_e H_e ḡ`` (``mean_loss``) or ``mean_e H_e g_e``, both detached; ``hess_terms`` and
    ``grad_terms`` are the (E,) squared norms, not differentiable.

    Args:
        features (N, d), weight (C, d), bias (C,) or None: one floating dtype and device
            (float16/bfloat16 also on the CPU, computed there in float32).
        labels: int64 (N,); offsets: the E+1 domain boundaries, ints or an int64 tensor (read
            on the host once).
        Loss options as in ``torch.nn.functional.cross_entropy`` applied to each domain.

    The penalty is differentiable with respect to features, weight and bias through the
    closed-form backward op; double backward raises RuntimeError. Invalid arguments raise
    ValueError naming the argument.
    """
    ignore_index, class_weight, label_smoothing, reduction, _ = ce_args(
        "hgp", ignore_index, class_weight, label_smoothing, reduction, None)
    offsets = offsets.tolist() if torch.is_tensor(offsets) else [int(o) for o in offsets]
    half = (torch.float16, torch.bfloat16)
    if features.device.type == "cpu" and features.dtype in half and weight.dtype == features.dtype and (
            bias is None or bias.dtype == features.dtype):
        # the CPU kernels run float32 and float64; the casts carry the gradients back
        up = [None if t is None else t.float() for t in (features, weight, bias)]
        if class_weight is not None:
            class_weight = class_weight.float()
        out = _call(*up, labels, offsets, alpha, beta, mean_loss, ignore_index, class_weight, label_smoothing,
                    reduction)
        return tuple(t.to(features.dtype) for t in out)
    return _call(features, weight, bias, labels, offsets, alpha, beta, mean_loss, ignore_index, class_weight,
                 label_smoothing, reduction)


def _call(features, weight, bias, labels, offsets, alpha, beta, mean_loss, ignore_index, class_weight,
          label_smoothing, reduction):
    """(penalty, hess_terms, grad_terms): the op without the list it saves for its backward."""
    penalty, hess_terms, grad_terms, _ = torch.ops.hessalign_ext.hgp_fused.default(
        features, weight, bias, labels, offsets, float(alpha), float(beta), bool(mean_loss), ignore_index,
        class_weight, label_smoothing, reduction)
    return penalty, hess_terms, grad_terms


@register_fake("hgp_fused")
def _fake(features, weight, bias, labels, offsets, alpha, beta, mean_loss, ignore_index, class_weight,
          label_smoothing, reduction):
    N, E = features.shape[0], len(offsets) - 1
    C, D = param_shape(features, weight, bias)
    # the saved list of host/hgp_fused.h (HgpSaved): c, p, R, U, S, pu, pbar; g, h_diff, g_diff
    rows = ([features.new_empty((N,))] + [features.new_empty((N, C)) for _ in range(4)]
            + [features.new_empty((N, 1)), features.new_empty((N,))])
    blocks = [features.new_empty((E, C, D)) for _ in range(3)]
    return features.new_empty(()), features.new_empty((E,)), features.new_empty((E,)), rows + blocks


@torch.library.register_fake("hessalign_ext::_hgp_fused_backward")
def _fake_backward(grad, features, weight, bias: Optional[torch.Tensor], offsets, alpha, beta, saved, output_mask):
    def out(wanted, like):
        return like.new_empty(like.shape) if wanted and like is not None else features.new_empty((0,))

    return out(output_mask[0], features), out(output_mask[1], weight), out(output_mask[2], bias)
