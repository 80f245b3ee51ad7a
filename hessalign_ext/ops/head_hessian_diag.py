"""head_hessian_diag: the public function, its fake kernel and its closed-form autograd
(kernels: csrc/host/head_hessian_diag.h, csrc/cpu/head_hessian_diag_cpu.cpp, csrc/cuda/head_hessian_diag_cuda.cu)."""
import torch

from ._docs import fill_doc
from ._registry import as_offsets, ce_args, register


@fill_doc
def head_hessian_diag(features, weight, bias, offsets, *, labels=None, ignore_index=-100, class_weight=None,
                      label_smoothing=0.0, reduction="mean", class_tile=None):
    """Exact diagonal of every domain's head Hessian.

    Args:
        {head}
        {offsets}

    Returns:
        (E, C, D) tensor.

    {curvature_options}

    {backward}
    """
    offsets = as_offsets("head_hessian_diag", offsets, features)
    ce = ce_args("head_hessian_diag", ignore_index, class_weight, label_smoothing, reduction, class_tile)
    return torch.ops.hessalign_ext.head_hessian_diag(features, weight, bias, offsets, labels, *ce)


register("head_hessian_diag", out="params", offsets_index=3)
