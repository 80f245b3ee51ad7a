"""head_hessian_trace: the public function, its fake kernel and its closed-form autograd
(kernels: csrc/host/head_hessian_trace.h, csrc/cpu/head_hessian_trace_cpu.cpp, csrc/cuda/head_hessian_trace_cuda.cu)."""
import torch

from ._docs import fill_doc
from ._registry import as_offsets, ce_args, register


@fill_doc
def head_hessian_trace(features, weight, bias, offsets, *, labels=None, ignore_index=-100, class_weight=None,
                       label_smoothing=0.0, reduction="mean", class_tile=None):
    """Exact trace of every domain's head Hessian.

    Args:
        {head}
        {offsets}

    Returns:
        (E,) tensor.

    {curvature_options}

    {backward}
    """
    offsets = as_offsets("head_hessian_trace", offsets, features)
    ce = ce_args("head_hessian_trace", ignore_index, class_weight, label_smoothing, reduction, class_tile)
    return torch.ops.hessalign_ext.head_hessian_trace(features, weight, bias, offsets, labels, *ce)


register("head_hessian_trace", out="domains", offsets_index=3)
