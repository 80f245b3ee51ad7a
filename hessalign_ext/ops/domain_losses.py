"""domain_losses: the public function, its fake kernel and its closed-form autograd
(kernels: csrc/host/domain_losses.h, csrc/cpu/domain_losses_cpu.cpp, csrc/cuda/domain_losses_cuda.cu)."""
import torch

from ._docs import fill_doc
from ._registry import as_offsets, ce_args, register


@fill_doc
def domain_losses(features, weight, bias, labels, offsets, *, ignore_index=-100, class_weight=None,
                  label_smoothing=0.0, reduction="mean", class_tile=None):
    """Cross-entropy loss of every domain, all domains in one pass.

    Args:
        {head}
        {labels}
        {offsets}

    Returns:
        (E,) tensor: the loss of each domain (mean or sum over its rows).

    {loss_options}

    {backward}
    """
    offsets = as_offsets("domain_losses", offsets, features)
    ce = ce_args("domain_losses", ignore_index, class_weight, label_smoothing, reduction, class_tile)
    return torch.ops.hessalign_ext.domain_losses(features, weight, bias, labels, offsets, *ce)


register("domain_losses", out="domains", offsets_index=4)
