"""domain_losses: the public function, its fake kernel and its closed-form autograd
(kernels: csrc/host/domain_losses.h, csrc/cpu/domain_losses_cpu.cpp, csrc/cuda/domain_losses_cuda.cu)."""
import torch

from ._registry import as_offsets, ce_args, register


def domain_losses(features, weight, bias, labels, offsets, *, ignore_index=-100, class_weight=None,
                  label_smoothing=0.0, reduction="mean", class_tile=None):
    """Cross-entropy loss of every domain, all domains in one pass.

    Args:
        features: (N, d) float32/float64 (also float16/bfloat16 on CUDA); rows grouped by domain.
        weight: (C, d), bias: (C,) or None; the head is ``features @ weight.T + bias``.
        labels: int64 (N,), each in [0, C) or equal to ignore_index.
        offsets: int64 (E+1,), sorted, 0 .. N, on the CPU or the device of features:
            domain e owns rows offsets[e] .. offsets[e+1]-1.

    Returns:
        (E,) tensor: the loss of each domain (mean or sum over its rows).

    Loss options (keyword, as in ``torch.nn.functional.cross_entropy`` applied to each
    domain's rows): ``ignore_index``, ``class_weight`` ((C,), needs ``labels``, not
    differentiable), ``label_smoothing``, ``reduction`` ("mean" or "sum" per domain).
    A domain that is empty or whose rows are all ignored contributes zeros.
    ``class_tile``: classes per tile (None: all C at once unless the N×C working buffers
    exceed HESSALIGN_TILE_BYTES, default 256 MiB; results agree to rounding for any tile).

    Differentiable with respect to features, weight and bias through a closed-form
    backward (one fused op); double backward raises RuntimeError. Invalid arguments raise
    ValueError naming the argument.
    """
    offsets = as_offsets("domain_losses", offsets, features)
    ce = ce_args("domain_losses", ignore_index, class_weight, label_smoothing, reduction, class_tile)
    return torch.ops.hessalign_ext.domain_losses(features, weight, bias, labels, offsets, *ce)


register("domain_losses", out="domains", offsets_index=4, differentiable=(0, 1, 2))
