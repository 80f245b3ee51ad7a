"""What every penalty shares: argument checks, loss options, (C, D) block helpers."""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

BACKENDS = ("kernel", "autograd")
# A class holding more than this of its row's mass is the row's dominant one (the kernels'
# kDominantProb): at most one class per row can, and the forms centered on it are exact for any
# choice, so the two need not agree.
DOMINANT_PROB = 0.6


def _ops():
    from hessalign_ext import ops  # the compiled extension; imported on first use

    return ops


def loss_options(ignore_index: int = -100, class_weight=None, label_smoothing: float = 0.0,
                 reduction: str = "mean", *, like: Optional[torch.Tensor] = None) -> dict:
    """Validated loss options as the ops take them (``class_weight`` as a tensor)."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum'; got {reduction!r}")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1]; got {label_smoothing}")
    if class_weight is not None and not torch.is_tensor(class_weight):
        class_weight = torch.as_tensor(class_weight, dtype=torch.float64)
    if class_weight is not None and like is not None:
        class_weight = class_weight.to(dtype=like.dtype, device=like.device)
    return {"ignore_index": int(ignore_index), "class_weight": class_weight,
            "label_smoothing": float(label_smoothing), "reduction": reduction}


def named_errors(name: str):
    """Decorator: an op's argument error, raised inside penalty ``name``, is re-raised in the
    penalty's name (the ops check what the penalty hands on, e.g. the label range, where a check
    here would cost a device sync). Errors of the backward pass keep the op's name."""
    def wrap(fn):
        @functools.wraps(fn)
        def penalty(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except ValueError as exc:
                op, sep, rest = str(exc).partition(": ")
                # only about the penalty's own arguments: one the penalty built is its bug, told as the op's
                if sep and op in _op_names() and rest.split(" ", 1)[0] in _PENALTY_ARGUMENTS:
                    raise ValueError(f"{name}: {rest} (from {op})") from exc
                raise
        return penalty
    return wrap


_PENALTY_ARGUMENTS = ("features", "weight", "bias", "labels", "offsets", "ignore_index", "class_weight",
                      "label_smoothing", "reduction")


def _op_names():
    from hessalign_ext import ops

    return ops.__all__


def checked(name: str, features, weight, bias, labels, offsets, backend: str, *, labels_required: bool = True,
            ignore_index: int = -100, class_weight=None, label_smoothing: float = 0.0, reduction: str = "mean"):
    """(offsets as a list of ints, the loss options) once every argument is checked; an error is a
    ValueError that names the penalty and the argument, as the ops' do."""
    try:
        offs = _check(features, weight, bias, labels, offsets, backend, labels_required)
        opts = loss_options(ignore_index, class_weight, label_smoothing, reduction, like=features)
        _check_loss_inputs(labels, opts, weight.shape[0], backend)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    return offs, opts


def _check(features, weight, bias, labels, offsets, backend, labels_required):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    if features.dim() != 2:
        raise ValueError(f"features must be (N, d); got shape {tuple(features.shape)}")
    if weight.dim() != 2 or weight.shape[1] != features.shape[1]:
        raise ValueError(f"weight must be (C, d={features.shape[1]}); got shape {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be (C={weight.shape[0]},) or None; got shape {tuple(bias.shape)}")
    if offsets.dim() != 1 or offsets.numel() < 2 or offsets.dtype != torch.int64:
        raise ValueError(f"offsets must be an int64 (E+1,) tensor with E >= 1; got "
                         f"{offsets.dtype} of shape {tuple(offsets.shape)}")
    offs = offsets.tolist()
    if offs[0] != 0 or offs[-1] != features.shape[0] or any(b < a for a, b in zip(offs, offs[1:])):
        raise ValueError(f"offsets must be sorted, start at 0 and end at N={features.shape[0]}; got {offs}")
    if labels is None:
        if labels_required:
            raise ValueError("labels are required")
        return offs
    if labels.dtype != torch.int64 or tuple(labels.shape) != (features.shape[0],):
        raise ValueError(f"labels must be int64 of shape (N={features.shape[0]},); got {labels.dtype} of shape "
                         f"{tuple(labels.shape)}")
    return offs


def _check_loss_inputs(labels, opts, C: int, backend: str) -> None:
    w = opts["class_weight"]
    if w is not None and tuple(w.shape) != (C,):
        raise ValueError(f"class_weight must be (C={C},); got shape {tuple(w.shape)}")
    if backend == "autograd" and labels is not None:
        # the kernel ops check the labels themselves; cross_entropy's IndexError would name neither
        kept = labels.masked_fill(labels == opts["ignore_index"], 0)  # no boolean indexing: one sync, not two
        lo, hi = torch.stack(torch.aminmax(kept)).tolist() if kept.numel() else (0, 0)
        if lo < 0 or hi >= C:
            raise ValueError(f"labels must be in [0, C={C}) or equal ignore_index={opts['ignore_index']}; got "
                             f"values in [{lo}, {hi}]")


def _params(weight, bias):
    """Tensors to differentiate against: the inputs themselves when they require grad."""
    W = weight if weight.requires_grad else weight.detach().requires_grad_(True)
    b = None
    if bias is not None:
        b = bias if bias.requires_grad else bias.detach().requires_grad_(True)
    return W, b, [W] if b is None else [W, b]


def _flat(parts) -> torch.Tensor:
    """(grad_W, grad_b) -> one (C, D) block, bias as the last column."""
    if len(parts) == 1:
        return parts[0]
    return torch.cat([parts[0], parts[1][:, None]], dim=1)


def _split(block: torch.Tensor, has_bias: bool):
    return [block[:, :-1], block[:, -1]] if has_bias else [block]


def _ce(logits, labels, opts) -> torch.Tensor:
    return F.cross_entropy(logits, labels, weight=opts["class_weight"], ignore_index=opts["ignore_index"],
                           label_smoothing=opts["label_smoothing"], reduction=opts["reduction"])


def _sqrt_safe(sq: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(sq + torch.finfo(sq.dtype).tiny)


def _sqdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Σ over the parameter block of (a - b)², per leading index."""
    return (a - b).pow(2).flatten(1).sum(1)


def centred(blocks: torch.Tensor, mean: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x_e − mean_e x``, the mean attached and subtracted twice, so that the deviations sum
    over e to their own rounding: near-aligned domains make the head's gradient
    ``Σ_e J_e (x_e − x̄)`` with ``J_e`` nearly equal, where a common part left by rounding ``x̄``
    alone would dominate it. ``mean``: ``blocks.mean(0)`` when the caller has it already.
    Differentiable: its gradient is the (projected) deviations, as against a detached mean,
    whose own derivative term vanishes."""
    dev = blocks - (blocks.mean(0) if mean is None else mean)
    return dev.sub_(dev.mean(0))


def _sqdev(x: torch.Tensor) -> torch.Tensor:
    """Σ over the parameter block of (x_e − mean_e x)², per leading index (``centred``): the
    value and gradient of ``_sqdist`` against a detached mean, exact near alignment."""
    return centred(x).pow(2).flatten(1).sum(1)


def logits_hvp(p: torch.Tensor, c: torch.Tensor, u: torch.Tensor):
    """Rows of ``H_i u_i = c_i p_i ⊙ (u_i − p_i · u_i)`` and the means ``p_i · u_i`` (``u`` may
    hold several C-blocks side by side): the compiled ``ops.logits_hvp``, one pass where the
    torch expression takes four; in float32 where the CPU kernels lack the dtype (float16,
    bfloat16)."""
    if p.device.type == "cpu" and p.dtype in (torch.float16, torch.bfloat16):
        s, m = _ops().logits_hvp(p.float(), c.float(), u.float())
        return s.to(p.dtype), m.to(p.dtype)
    return _ops().logits_hvp(p, c, u)


def _result(penalty, hess_terms, grad_terms, return_terms):
    if not return_terms:
        return penalty
    return penalty, {"hessian": hess_terms.detach().mean(), "gradient": grad_terms.detach().mean()}


def _row_domains(offs, device: torch.device) -> torch.Tensor:
    """Each row's domain index (N,), built on the host and copied once (asynchronously on CUDA:
    from pinned memory, where a device-side repeat_interleave takes a blocking copy and a scan)."""
    counts = torch.tensor([t - s for s, t in zip(offs, offs[1:])])
    domain = torch.repeat_interleave(torch.arange(len(offs) - 1), counts, output_size=offs[-1])
    if device.type == "cuda":
        return domain.pin_memory().to(device, non_blocking=True)
    return domain.to(device)


class RowDomains:
    """The domain of each row, for per-domain sums and per-row broadcasts: reshapes when every
    domain holds n rows, an index (built on first use) otherwise."""

    def __init__(self, offs, device: torch.device):
        self.offs, self.device = offs, device
        self.E, self.N = len(offs) - 1, offs[-1]
        n = self.N // self.E
        self.n = n if n and all(t - s == n for s, t in zip(offs, offs[1:])) else 0  # 0: unequal
        self._index = None

    @property
    def index(self) -> torch.Tensor:
        if self._index is None:
            self._index = _row_domains(self.offs, self.device)
        return self._index

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """(N, ...) -> (E, ...): the sum over each domain's rows."""
        if self.n:
            return x.reshape(self.E, self.n, *x.shape[1:]).sum(1)
        return x.new_zeros(self.E, *x.shape[1:]).index_add_(0, self.index, x)

    def expand(self, v: torch.Tensor) -> torch.Tensor:
        """(E,) -> (N,): each row gets its domain's value."""
        return v.repeat_interleave(self.n) if self.n else v[self.index]


def loss_rows(labels: Optional[torch.Tensor], offs, num_classes: int, opts: dict, dtype: torch.dtype,
              device: torch.device):
    """Per-row Hessian scale ``c`` (N,), targets ``t`` (N, C) and the rows' domains
    (``RowDomains``) of the loss options with each domain's denominator ``D_e``: with labels the
    compiled ``ops.loss_rows`` (one coefficient kernel and one pass for the targets; it checks the
    label range), ``c_i = a_i + b_i Σ_c w_c`` and ``t_ic = a_i [c = y_i] + b_i w_c`` with
    ``a_i = (1-ε) w_{y_i} / D_e``, ``b_i = ε / (C D_e)``. Without labels every row has weight 1:
    ``c_i = 1/D_e`` (1 under "sum"), ``t = 0``, whatever the smoothing."""
    N, C = offs[-1], num_classes
    domains = RowDomains(offs, device)
    if labels is None:
        c = torch.ones(N, dtype=dtype, device=device)
        if opts["reduction"] == "mean":
            c = domains.expand(domains.sum(c).reciprocal())  # an empty domain's 1/0 reaches no row
        return c, torch.zeros(N, C, dtype=dtype, device=device), domains
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    c, t = _ops().loss_rows(labels, torch.tensor(offs), C, dtype=work, ignore_index=opts["ignore_index"],
                            class_weight=opts["class_weight"], label_smoothing=opts["label_smoothing"],
                            reduction=opts["reduction"])
    return c.to(dtype), t.to(dtype), domains


def dominant_split(P: torch.Tensor):
    """(dominant, p̄): each row's mask of the class holding more than DOMINANT_PROB (at most one),
    and p̄ (N, 1), the mass of the other classes summed directly: 1 − p_k of a confident row,
    which 1 − p_k itself keeps only to eps/p̄."""
    dominant = P > DOMINANT_PROB
    return dominant, P.masked_fill(dominant, 0).sum(1, keepdim=True)


class _SoftmaxResiduals(torch.autograd.Function):
    """Rows ``r_i = c_i p_i − t_i`` with ``p_i = softmax(l_i)``, exact at confident rows. There
    ``1 − p_k`` of the dominant class k is the row's small mass p̄ and a rounded ``p_k`` keeps only
    eps/p̄ of it, as ``c p_k − t_k`` and the softmax backward's ``x_k − p·x`` would. Both take p̄
    as ``Σ' p`` over the other classes, which keep their relative precision, and the backward
    ``p ⊙ (x − p·x)`` is centered on it (the kernels' Centered, csrc/math/tile.h)."""

    @staticmethod
    def forward(ctx, logits, c, t):
        P = logits.softmax(1)
        dominant, pbar = dominant_split(P)
        c1 = c[:, None]
        ctx.save_for_backward(P, dominant, pbar, c1)
        return torch.where(dominant, (c1 - t) - c1 * pbar, c1 * P - t)

    @staticmethod
    def backward(ctx, dR):
        P, dominant, pbar, c1 = ctx.saved_tensors
        x = c1 * dR
        rest = (P * x).masked_fill(dominant, 0).sum(1, keepdim=True)  # Σ' p x
        xk = x.masked_fill(~dominant, 0).sum(1, keepdim=True)
        d_logits = P * torch.where(dominant, pbar * xk - rest, x - (1 - pbar) * xk - rest)
        d_c = (dR * torch.where(dominant, 1 - pbar, P)).sum(1) if ctx.needs_input_grad[1] else None
        return d_logits, d_c, -dR if ctx.needs_input_grad[2] else None


def softmax_residuals(logits: torch.Tensor, c: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``c_i softmax(l_i) − t_i`` per row (``loss_rows``' c and t), differentiable, exact at
    confident rows (``_SoftmaxResiduals``)."""
    return _SoftmaxResiduals.apply(logits, c, t)
