"""hutchinson_diag: the public function, its fake kernel and its closed-form autograd
(kernels: csrc/host/hutchinson_diag.h, csrc/cpu/hutchinson_diag_cpu.cpp, csrc/cuda/hutchinson_diag_cuda.cu)."""
import torch

from ._registry import as_offsets, ce_args, register


def hutchinson_diag(features, weight, bias, offsets, num_probes, seed, *, labels=None, ignore_index=-100,
                    class_weight=None, label_smoothing=0.0, reduction="mean", class_tile=None):
    """Hutchinson estimate (1/K) Σ_k v_k ⊙ (H_e v_k) of every domain's Hessian diagonal.

    Args:
        features: (N, d) float32/float64 (also float16/bfloat16 on CUDA); rows grouped by domain.
        weight: (C, d), bias: (C,) or None; the head is ``features @ weight.T + bias``.
        num_probes: K >= 1 Rademacher probes, shared by all domains.
        seed: probe k's sign at element j is a pure function of (seed, k, j)
            (hessalign_ext.probes), identical on CPU and CUDA; no probe tensor is stored.
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
    offsets = as_offsets("hutchinson_diag", offsets, features)
    ce = ce_args("hutchinson_diag", ignore_index, class_weight, label_smoothing, reduction, class_tile)
    return torch.ops.hessalign_ext.hutchinson_diag(features, weight, bias, offsets, int(num_probes), int(seed),
                                                   labels, *ce)


register("hutchinson_diag", out="params", offsets_index=3, differentiable=(0, 1, 2))
