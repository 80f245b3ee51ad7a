"""Shared test tables and helpers: tolerances, devices, shapes, loss options, problems.

Truth is ``hessalign_ext.reference`` (float64 double-backward autograd). Test modules import
the helpers below with ``from conftest import ...`` (pytest puts ``tests/`` on ``sys.path``).
Nothing here touches ``torch.cuda`` at import time: CUDA cases are skipped at collection.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Callable, Optional

import pytest
import torch

# --------------------------------------------------------------------------------------
# Tolerances: one table. A loosening carries a comment saying why.
# --------------------------------------------------------------------------------------

TOL = {
    torch.float64: dict(rtol=1e-10, atol=1e-12),
    torch.float32: dict(rtol=1e-4, atol=1e-6),
}

# (shape id, dtype) -> tolerance replacing TOL[dtype] for that shape.
TOL_OVERRIDES = {
    # Logits ≈ 1e4 in float32 carry rounding of ~ulp(1e4) ≈ 1e-3 (absolute) from the GEMM
    # itself, so softmax probabilities, and everything built on them, are only good to a
    # few 1e-4 absolute; plain torch in float32 (linear + cross_entropy + autograd) is off
    # from the float64 truth by the same order (1e-4 on head_grad).
    ("logits_1e4", torch.float32): dict(rtol=1e-2, atol=1e-3),
}

# Gradients of float32 ops: finite-precision through two GEMM chains (forward and backward),
# compared with float64 truth; one order of magnitude above the forward tolerance.
GRAD_TOL_F32 = dict(rtol=1e-3, atol=1e-5)


def tol(dtype: torch.dtype, shape_id: Optional[str] = None) -> dict:
    return TOL_OVERRIDES.get((shape_id, dtype), TOL[dtype])


def assert_close(actual, expected, dtype=None, shape_id=None, **override):
    """actual (any dtype/device) vs float64 expected, with the table's tolerance for dtype."""
    dtype = dtype or actual.dtype
    t = dict(tol(dtype, shape_id))
    t.update(override)
    torch.testing.assert_close(
        actual.detach().to("cpu", torch.float64), expected.detach().to("cpu", torch.float64), **t
    )


# --------------------------------------------------------------------------------------
# Devices: one list. CUDA cases are skipped (with a reason) at collection when unavailable.
# --------------------------------------------------------------------------------------

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device")


def pytest_collection_modifyitems(config, items):
    if any("cuda" in item.keywords for item in items) and not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="CUDA is not available")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)


DTYPES = [torch.float64, torch.float32]

# --------------------------------------------------------------------------------------
# Shapes: one named table.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Shape:
    id: str
    sizes: tuple  # rows per domain; E = len(sizes), N = sum(sizes)
    C: int
    d: int
    bias: bool = True
    noncontiguous: bool = False  # features as a strided view
    logit_offset: float = 0.0  # added to the bias (needs bias=True): logits ≈ offset + O(1)

    @property
    def E(self):
        return len(self.sizes)

    @property
    def N(self):
        return sum(self.sizes)

    @property
    def D(self):
        return self.d + 1 if self.bias else self.d


SHAPES = [
    Shape("tiny", (1,), C=2, d=1),
    Shape("domainbed", (8, 8, 8), C=7, d=16),
    Shape("unequal", (5, 1, 9), C=5, d=6),
    Shape("equal", (3, 3, 3), C=4, d=3),  # equal domains: the batched per-domain GEMMs
    Shape("c1000", (4, 3), C=1000, d=3),
    Shape("off_tile", (6, 5), C=37, d=129),
    Shape("no_bias", (4, 6), C=5, d=7, bias=False),
    Shape("noncontiguous", (5, 4), C=6, d=8, noncontiguous=True),
    Shape("logits_1e4", (3, 4), C=5, d=4, logit_offset=1e4),
    Shape("empty_domain", (3, 0, 4), C=4, d=5),
    Shape("no_rows", (0,), C=3, d=2),
]
SHAPE_IDS = [s.id for s in SHAPES]
SHAPE = {s.id: s for s in SHAPES}
# Shapes cheap enough for float64 backward comparisons against the reference.
SMALL_SHAPES = [SHAPE[i] for i in ("tiny", "unequal", "equal", "no_bias", "noncontiguous", "empty_domain", "no_rows")]
SMALL_SHAPE_IDS = [s.id for s in SMALL_SHAPES]


# --------------------------------------------------------------------------------------
# Problems: random inputs (never zeros) for a shape.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Problem:
    shape: Shape
    features: torch.Tensor
    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    offsets: torch.Tensor
    labels: torch.Tensor
    vectors: torch.Tensor  # (E, C, D) per-domain HVP vectors
    class_weight: torch.Tensor  # (C,), positive, for the loss-option cases

    def head(self):
        """(features, weight, bias): the differentiable head inputs, in op order."""
        return (self.features, self.weight, self.bias)


def make_problem(shape: Shape, dtype=torch.float64, device="cpu", seed=0, requires_grad=False) -> Problem:
    g = torch.Generator().manual_seed(seed)
    N, d, C = shape.N, shape.d, shape.C

    def randn(*size, scale=1.0):
        return (torch.randn(*size, generator=g, dtype=torch.float64) * scale).to(dtype)

    features = randn(N, 2 * d) if shape.noncontiguous else randn(N, d)
    weight = randn(C, d, scale=d**-0.5)
    bias = randn(C) + shape.logit_offset if shape.bias else None
    offsets = torch.tensor([0] + list(torch.tensor(shape.sizes).cumsum(0).tolist()), dtype=torch.int64)
    labels = torch.randint(0, C, (N,), generator=g, dtype=torch.int64)
    vectors = randn(shape.E, C, shape.D)
    class_weight = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(dtype)

    def dev(t):
        return None if t is None else t.to(device)

    features = dev(features)
    if shape.noncontiguous:  # sliced on the device: a copy to CUDA would make it contiguous
        features = features[:, ::2]
        assert not features.is_contiguous()
    p = Problem(shape, features, dev(weight), dev(bias), dev(offsets), dev(labels), dev(vectors), dev(class_weight))
    if requires_grad:
        for t in (p.features, p.weight, p.bias, p.vectors):
            if t is not None:
                t.requires_grad_(True)
    return p


def confident_head(classes, margin: float, d: int, C: int, seed: int):
    """A float64 head whose logits put row i `margin` nats on class ``classes[i]`` above its other
    classes, which spread over a nat (a confident row: p̄ ≈ (C-1) e^-margin): (features, weight,
    bias, the generator, to draw more from). d ≥ N, so a weight gives exactly these logits."""
    g = torch.Generator().manual_seed(seed)
    N = len(classes)
    z = torch.randn(N, d, generator=g, dtype=torch.float64)
    b = torch.randn(C, generator=g, dtype=torch.float64)
    one_hot = torch.nn.functional.one_hot(torch.as_tensor(classes), C).double()
    logits = margin * one_hot + torch.rand(N, C, generator=g, dtype=torch.float64)
    w = torch.linalg.lstsq(z, logits - b).solution.T.contiguous()
    return z, w, b, g


# --------------------------------------------------------------------------------------
# Loss options: one table of cases, each a function of the problem returning the op's
# keyword options (``labels`` included; domain_losses/head_grad take it positionally).
# --------------------------------------------------------------------------------------


def _ignore_rows(p: Problem, value: int, rows) -> torch.Tensor:
    labels = p.labels.clone()
    if p.shape.N:
        labels[torch.as_tensor(rows, dtype=torch.int64) % p.shape.N] = value
    return labels


def _ignore_domain(p: Problem, value: int, e: int) -> torch.Tensor:
    labels = p.labels.clone()
    lo, hi = int(p.offsets[e]), int(p.offsets[e + 1])
    labels[lo:hi] = value
    return labels


LOSS_CASES: dict[str, Callable[[Problem], dict]] = {
    "plain": lambda p: dict(labels=p.labels),
    "ignore_some": lambda p: dict(labels=_ignore_rows(p, -100, [0, 3, 4])),
    "ignore_index_negative": lambda p: dict(labels=_ignore_rows(p, -1, [1, 2]), ignore_index=-1),
    # ignore_index inside [0, C): every row labelled 1 is ignored
    "ignore_index_in_range": lambda p: dict(labels=_ignore_rows(p, 1, [0, 5]), ignore_index=1),
    "all_ignored_domain": lambda p: dict(labels=_ignore_domain(p, -100, 0)),
    "all_ignored_domain_sum": lambda p: dict(labels=_ignore_domain(p, -100, 0), reduction="sum"),
    "class_weight": lambda p: dict(labels=p.labels, class_weight=p.class_weight),
    "label_smoothing": lambda p: dict(labels=p.labels, label_smoothing=0.15),
    "label_smoothing_1": lambda p: dict(labels=p.labels, label_smoothing=1.0),
    "sum": lambda p: dict(labels=p.labels, reduction="sum"),
    "all_together_mean": lambda p: dict(
        labels=_ignore_rows(p, 3, [0, 2]), ignore_index=3, class_weight=p.class_weight, label_smoothing=0.2
    ),
    "all_together_sum": lambda p: dict(
        labels=_ignore_rows(p, -100, [1]), class_weight=p.class_weight, label_smoothing=0.3, reduction="sum"
    ),
}
LOSS_CASE_IDS = list(LOSS_CASES)
# Shape used for the loss-option cases: unequal domains (one of them a single row).
LOSS_SHAPE = Shape("loss_options", (5, 1, 6), C=5, d=4)


def full_hessians(p: Problem) -> torch.Tensor:
    """(E, C·D, C·D): each domain's Hessian of its plain mean loss over [W | b], by autograd
    (small heads only: the probe ops' variance tests)."""
    hs = []
    for e in range(p.shape.E):
        lo, hi = int(p.offsets[e]), int(p.offsets[e + 1])
        zt = torch.cat([p.features[lo:hi], torch.ones(hi - lo, 1, dtype=torch.float64)], 1)
        theta = torch.cat([p.weight, p.bias[:, None]], 1)
        h = torch.autograd.functional.hessian(lambda t: torch.logsumexp(zt @ t.T, 1).mean(), theta)
        hs.append(h.reshape(theta.numel(), theta.numel()))
    return torch.stack(hs)


def python_below_op(op, *args):
    """(result, the Python functions a call of OpOverload op ran below its own __call__): none where
    its kernels, autograd included, are C++ (csrc/autograd.cpp)."""
    frames = []
    sys.setprofile(lambda frame, event, arg: frames.append(frame.f_code.co_filename) if event == "call" else None)
    try:
        out = op(*args)
    finally:
        sys.setprofile(None)
    return out, [f for f in frames if not f.endswith("torch/_ops.py")]


def aten_calls(fn: Callable, *names: str) -> int:
    """How many times fn() calls the ATen ops named (torch.profiler events, e.g. "aten::bmm")."""
    with torch.profiler.profile() as prof:
        fn()
    return sum(e.name in names for e in prof.events())


# --------------------------------------------------------------------------------------
# Backward helpers
# --------------------------------------------------------------------------------------


def grads_of(out: torch.Tensor, inputs, upstream: torch.Tensor):
    """d<out, upstream>/d inputs, zeros for inputs out does not depend on (None stays None)."""
    inputs = [t for t in inputs if t is not None]
    if not out.requires_grad:
        return [torch.zeros_like(t) for t in inputs]
    gs = torch.autograd.grad(out, inputs, upstream.to(out.dtype), allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, gs)]


def check_backward(call_op, call_ref, p: Problem, inputs, seed=1, grad_tol=None):
    """Our op's autograd grads vs torch.autograd.grad of the reference, random upstream."""
    out = call_op()
    ref = call_ref()
    g = torch.Generator().manual_seed(seed)
    upstream = torch.randn(ref.shape, generator=g, dtype=torch.float64).to(ref.device)
    ours = grads_of(out, inputs, upstream)
    truth = grads_of(ref, inputs, upstream)
    for name, a, b in zip(("features", "weight", "bias", "vectors"), ours, truth):
        t = grad_tol or (TOL[torch.float64] if a.dtype == torch.float64 else GRAD_TOL_F32)
        torch.testing.assert_close(a.double(), b.double(), **t, msg=lambda m: f"grad of {name}: {m}")


def assert_double_backward_raises(op_name: str, call_op, inputs):
    """Backward of the op's backward raises a RuntimeError naming the op."""
    inputs = [t for t in inputs if t is not None]
    with pytest.raises(RuntimeError, match=op_name):
        out = call_op()
        gs = torch.autograd.grad(out.sum(), inputs, create_graph=True, allow_unused=True)
        total = sum(x.sum() for x in gs if x is not None)
        torch.autograd.grad(total, inputs, allow_unused=True)
