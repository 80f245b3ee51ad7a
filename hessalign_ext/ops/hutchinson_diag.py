"""hutchinson_diag: the public function, its fake kernel and its closed-form autograd
(kernels: csrc/host/hutchinson_diag.h, csrc/cpu/hutchinson_diag_cpu.cpp, csrc/cuda/hutchinson_diag_cuda.cu)."""
import torch

from ._docs import fill_doc
from ._registry import as_offsets, ce_args, register


@fill_doc
def hutchinson_diag(features, weight, bias, offsets, num_probes, seed, *, labels=None, ignore_index=-100,
                    class_weight=None, label_smoothing=0.0, reduction="mean", class_tile=None):
    """Hutchinson estimate (1/K) Σ_k v_k ⊙ (H_e v_k) of every domain's Hessian diagonal.

    Args:
        {head}
        {probes}
        {offsets}

    Returns:
        (E, C, D) tensor.

    {curvature_options}

    {backward}
    """
    offsets = as_offsets("hutchinson_diag", offsets, features)
    ce = ce_args("hutchinson_diag", ignore_index, class_weight, label_smoothing, reduction, class_tile)
    return torch.ops.hessalign_ext.hutchinson_diag(features, weight, bias, offsets, int(num_probes), int(seed),
                                                   labels, *ce)


register("hutchinson_diag", out="params", offsets_index=3)
