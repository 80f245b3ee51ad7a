"""loss_rows: every row's loss coefficient and targets under the loss options, all domains in
one pass, and its fake kernel (kernels: csrc/host/loss_rows.h, csrc/cpu/loss_rows_cpu.cpp,
csrc/cuda/loss_rows_cuda.cu). Not differentiable: it depends on the labels only."""
import torch

from ._registry import as_offsets, ce_args, register_fake

_DTYPES = (torch.float32, torch.float64)


def loss_rows(labels, offsets, num_classes, *, dtype=torch.float32, ignore_index=-100, class_weight=None,
              label_smoothing=0.0, reduction="mean"):
    """Per-row Hessian scale ``c`` (N,) and targets ``t`` (N, C) of cross-entropy with
    ``torch.nn.functional.cross_entropy``'s options applied to each domain's rows (DESIGN.md §1):
    with ``D_e`` the domain's denominator (Σ of its kept rows' class weights under "mean", 1
    under "sum"), ``a_i = (1-ε) w_{y_i} / D_e``, ``b_i = ε / (C D_e)``, ``c_i = a_i + b_i Σ_c w_c``
    and ``t_ic = a_i [c = y_i] + b_i w_c``. The logits gradient of domain e's loss is then
    ``c_i softmax(l_i) − t_i`` and its Hessian ``c_i (diag p_i − p_i p_iᵀ)``. Ignored rows, and
    every row of a domain whose ``D_e`` is 0, get zeros.

    Args:
        labels: int64 (N,), each in [0, C) or equal to ignore_index; the results' device.
        offsets: int64 (E+1,), sorted, 0 .. N (CPU or the labels' device).
        num_classes: C >= 1. dtype: float32 or float64.
    Invalid arguments raise ValueError naming the argument.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"loss_rows: dtype must be float32 or float64; got {dtype}")
    offsets = as_offsets("loss_rows", offsets, labels)
    ignore_index, class_weight, label_smoothing, reduction, _ = ce_args(
        "loss_rows", ignore_index, class_weight, label_smoothing, reduction, None)
    return torch.ops.hessalign_ext.loss_rows(labels, offsets, int(num_classes), ignore_index, class_weight,
                                             label_smoothing, reduction, dtype)


@register_fake("loss_rows")
def _fake(labels, offsets, num_classes, ignore_index, class_weight, label_smoothing, reduction, dtype):
    N = labels.shape[0]
    return labels.new_empty((N,), dtype=dtype), labels.new_empty((N, num_classes), dtype=dtype)
