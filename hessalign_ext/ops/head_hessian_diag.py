"""head_hessian_diag: the public function, its fake kernel and its closed-form autograd
(kernels: csrc/host/head_hessian_diag.h, csrc/cpu/head_hessian_diag_cpu.cpp, csrc/cuda/head_hessian_diag_cuda.cu)."""
import torch

from ._registry import as_offsets, ce_args, register


def head_hessian_diag(features, weight, bias, offsets, *, labels=None, ignore_index=-100, class_weight=None,
                      label_smoothing=0.0, reduction="mean", class_tile=None):
    """Exact diagonal of every domain's head Hessian.

    Args:
        features: (N, d) float32/float64 (also float16/bfloat16 on CUDA); rows grouped by domain.
        weight: (C, d), bias: (C,) or None; the head is ``features @ weight.T + bias``.
        offsets: int64 (E+1,), sorted, 0 .. N, on the CPU or the device of features:
            domain e owns rows offsets[e] .. offsets[e+1]-1.

    Returns:
        (E, C, D) tensor.

    Loss options (keyword, as in ``torch.nn.functional.cross_entropy`` applied to each
    domain's rows): ``ignore_index``, ``class_weight`` ((C,), needs ``labels``, not
    differentiable), ``label_smoothing``, ``reduction`` ("mean" or "sum" per domain).
    ``labels`` (N,) int64 (keyword) makes it the curvature of exactly that loss: ignored rows
    drop out and each row is weighted as in the loss; without labels, of the plain mean loss.
    A domain that is empty or whose rows are all ignored contributes zeros.
    ``class_tile``: classes per tile (None: all C at once unless the N×C working buffers
    exceed HESSALIGN_TILE_BYTES, default 256 MiB; results agree to rounding for any tile).

    Differentiable with respect to features, weight and bias through a closed-form
    backward (one fused op); double backward raises RuntimeError. Invalid arguments raise
    ValueError naming the argument.
    """
    offsets = as_offsets("head_hessian_diag", offsets, features)
    ce = ce_args("head_hessian_diag", ignore_index, class_weight, label_smoothing, reduction, class_tile)
    return torch.ops.hessalign_ext.head_hessian_diag(features, weight, bias, offsets, labels, *ce)


register("head_hessian_diag", out="params", offsets_index=3, differentiable=(0, 1, 2))
