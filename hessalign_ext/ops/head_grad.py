"""head_grad: the public function, its fake kernel and its closed-form autograd
(kernels: csrc/host/head_grad.h, csrc/cpu/head_grad_cpu.cpp, csrc/cuda/head_grad_cuda.cu)."""
import torch

from ._docs import fill_doc
from ._registry import as_offsets, ce_args, register


@fill_doc
def head_grad(features, weight, bias, labels, offsets, *, ignore_index=-100, class_weight=None, label_smoothing=0.0,
              reduction="mean", class_tile=None):
    """Gradient of every domain's loss with respect to the head [W | b].

    Args:
        {head}
        {labels}
        {offsets}

    Returns:
        (E, C, D) tensor, D = d + 1 with the bias gradient as last column (D = d without bias).

    {loss_options}

    {backward}
    """
    offsets = as_offsets("head_grad", offsets, features)
    ce = ce_args("head_grad", ignore_index, class_weight, label_smoothing, reduction, class_tile)
    return torch.ops.hessalign_ext.head_grad(features, weight, bias, labels, offsets, *ce)


register("head_grad", out="params", offsets_index=4)
