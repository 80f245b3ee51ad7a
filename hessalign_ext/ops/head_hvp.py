"""head_hvp: the public function, its fake kernel and its closed-form autograd
(kernels: csrc/host/head_hvp.h, csrc/cpu/head_hvp_cpu.cpp, csrc/cuda/head_hvp_cuda.cu)."""
import torch

from ._docs import fill_doc
from ._registry import as_offsets, ce_args, register


@fill_doc
def head_hvp(features, weight, bias, vectors, offsets, *, labels=None, ignore_index=-100, class_weight=None,
             label_smoothing=0.0, reduction="mean", class_tile=None):
    """Hessian-vector products H_e v_e of every domain's loss over the head [W | b].

    Args:
        {head}
        vectors: (E, C, D) one vector per domain, or (C, D) shared by all domains.
        {offsets}

    Returns:
        (E, C, D) tensor.

    {curvature_options}

    Differentiable with respect to features, weight and bias, and vectors through a closed-form
    backward (one fused op); double backward raises RuntimeError. Invalid arguments raise
    ValueError naming the argument.
    """
    offsets = as_offsets("head_hvp", offsets, features)
    ce = ce_args("head_hvp", ignore_index, class_weight, label_smoothing, reduction, class_tile)
    return torch.ops.hessalign_ext.head_hvp(features, weight, bias, vectors, offsets, labels, *ce)


register("head_hvp", out="params", offsets_index=4)
