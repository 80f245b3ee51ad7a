"""hutchinson_trace: the public function, its fake kernel and its closed-form autograd
(kernels: csrc/host/hutchinson_trace.h, csrc/cpu/hutchinson_trace_cpu.cpp, csrc/cuda/hutchinson_trace_cuda.cu)."""
import torch

from ._docs import fill_doc
from ._registry import as_offsets, ce_args, register


@fill_doc
def hutchinson_trace(features, weight, bias, offsets, num_probes, seed, *, labels=None, ignore_index=-100,
                     class_weight=None, label_smoothing=0.0, reduction="mean", class_tile=None):
    """Hutchinson estimate (1/K) Σ_k v_kᵀ H_e v_k of every domain's Hessian trace.

    Args:
        {head}
        {probes}
        {offsets}

    Returns:
        (E,) tensor.

    {curvature_options}

    {backward}
    """
    offsets = as_offsets("hutchinson_trace", offsets, features)
    ce = ce_args("hutchinson_trace", ignore_index, class_weight, label_smoothing, reduction, class_tile)
    return torch.ops.hessalign_ext.hutchinson_trace(features, weight, bias, offsets, int(num_probes), int(seed),
                                                    labels, *ce)


register("hutchinson_trace", out="domains", offsets_index=3)
