"""head_hvp: the public function, its fake kernel and its closed-form autograd
(kernels: csrc/host/head_hvp.h, csrc/cpu/head_hvp_cpu.cpp, csrc/cuda/head_hvp_cuda.cu)."""
import torch

from ._registry import as_offsets, ce_args, register


def head_hvp(features, weight, bias, vectors, offsets, *, labels=None, ignore_index=-100, class_weight=None,
             label_smoothing=0.0, reduction="mean", class_tile=None):
    """Hessian-vector products H_e v_e of every domain's loss over the head [W | b].

    Args:
        features: (N, d) float32/float64 (also float16/bfloat16 on CUDA); rows grouped by domain.
        weight: (C, d), bias: (C,) or None; the head is ``features @ weight.T + bias``.
        vectors: (E, C, D) one vector per domain, or (C, D) shared by all domains.
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

    Differentiable with respect to features, weight and bias, and vectors through a closed-form
    backward (one fused op); double backward raises RuntimeError. Invalid arguments raise
    ValueError naming the argument.
    """
    offsets = as_offsets("head_hvp", offsets, features)
    ce = ce_args("head_hvp", ignore_index, class_weight, label_smoothing, reduction, class_tile)
    return torch.ops.hessalign_ext.head_hvp(features, weight, bias, vectors, offsets, labels, *ce)


register("head_hvp", out="params", offsets_index=4, differentiable=(0, 1, 2, 3))
