"""head_hessian_inner: the public function, its fake kernel and its closed-form autograd
(kernels: csrc/host/head_hessian_inner.h, csrc/cpu/head_hessian_inner_cpu.cpp, csrc/cuda/head_hessian_inner_cuda.cu)."""
import torch

from ._docs import fill_doc
from ._registry import as_offsets, ce_args, register


@fill_doc
def head_hessian_inner(features, weight, bias, offsets, *, labels=None, ignore_index=-100, class_weight=None,
                       label_smoothing=0.0, reduction="mean", class_tile=None):
    """Frobenius inner products ⟨H_a, H_b⟩_F of every pair of domains' head Hessians.

    Computed without forming any Hessian, from Gram matrices of the features and the
    probabilities (DESIGN.md §1): O(N² (C + d)) work and O(N²) memory for the batch's N rows.
    ``‖H_a - H_b‖_F² = G_aa - 2 G_ab + G_bb`` follows from the result G.

    Args:
        {head}
        {offsets}

    Returns:
        (E, E) symmetric tensor G with G[a, b] = ⟨H_a, H_b⟩_F.

    {curvature_options}

    {backward}
    """
    offsets = as_offsets("head_hessian_inner", offsets, features)
    ce = ce_args("head_hessian_inner", ignore_index, class_weight, label_smoothing, reduction, class_tile)
    return torch.ops.hessalign_ext.head_hessian_inner(features, weight, bias, offsets, labels, *ce)


register("head_hessian_inner", out="pairs", offsets_index=3)
