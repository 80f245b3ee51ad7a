"""Every bad input raises before any kernel runs, naming the op and the argument.

One table: (op, overrides of the valid call, exception type, message fragment). The valid
call is built from one problem (E=3 domains of 5, 1, 9 rows, C=5, d=6, float64); an
override replaces one argument (or loss option) by a bad value.
"""

import re

import pytest
import torch

import hessalign_ext
from conftest import SHAPE, make_problem

OPS = ["domain_losses", "head_grad", "head_hvp", "head_hessian_diag", "head_hessian_trace", "head_hessian_inner",
       "hutchinson_diag", "hutchinson_trace"]
OPTIONS = ("ignore_index", "class_weight", "label_smoothing", "reduction", "class_tile")
N, C, D = 15, 5, 7


def invoke(op, p, **overrides):
    """Calls op on the valid problem p with some arguments replaced."""
    opts = {k: overrides.pop(k) for k in list(overrides) if k in OPTIONS}
    a = dict(features=p.features, weight=p.weight, bias=p.bias, labels=p.labels, offsets=p.offsets,
             vectors=p.vectors, num_probes=2, seed=0)
    a.update(overrides)
    f = getattr(hessalign_ext, op)
    head = (a["features"], a["weight"], a["bias"])
    if op in ("domain_losses", "head_grad"):
        return f(*head, a["labels"], a["offsets"], **opts)
    if op == "head_hvp":
        return f(*head, a["vectors"], a["offsets"], labels=a["labels"], **opts)
    if op.startswith("hutchinson"):
        return f(*head, a["offsets"], a["num_probes"], a["seed"], labels=a["labels"], **opts)
    return f(*head, a["offsets"], labels=a["labels"], **opts)


def _labels(p, i, value, dtype=torch.int64):
    labels = p.labels.clone().to(dtype)
    labels[i] = value
    return labels


V = ValueError
CASES = [
    # -- head: ranks, shapes, dtypes (every op) --
    *[(op, lambda p: dict(features=p.features[0]), V, "features must be 2-D") for op in OPS],
    ("head_hvp", lambda p: dict(weight=p.weight[None]), V, "weight must be 2-D"),
    ("head_grad", lambda p: dict(weight=p.weight[:, :-1]), V, "weight must be (C, d)"),
    ("head_hessian_diag", lambda p: dict(bias=p.bias[:-1]), V, "bias must be 1-D of length C = 5"),
    ("head_hessian_trace", lambda p: dict(bias=p.bias[:, None]), V, "bias must be 1-D"),
    ("head_hvp", lambda p: dict(weight=p.weight.float()), V, "weight must have the dtype of features"),
    ("domain_losses", lambda p: dict(bias=p.bias.float()), V, "bias must have the dtype of features"),
    ("head_grad", lambda p: dict(features=p.features.long(), weight=p.weight.long(), bias=p.bias.long()),
     V, "features must be float32 or float64"),
    ("head_hvp", lambda p: dict(features=p.features.to(torch.complex128), weight=p.weight.to(torch.complex128),
                                bias=p.bias.to(torch.complex128), vectors=p.vectors.to(torch.complex128)),
     V, "features must be float32 or float64"),
    # float16/bfloat16 are CUDA-only (accumulated in float32 there)
    ("head_hessian_diag", lambda p: dict(features=p.features.half(), weight=p.weight.half(), bias=p.bias.half()),
     V, "features must be float32 or float64"),
    ("head_hessian_diag", lambda p: dict(features=p.features[:, :0], weight=p.weight[:, :0]), V, "d >= 1"),
    # -- offsets (every op for the commonest mistake) --
    *[(op, lambda p: dict(offsets=torch.tensor([0, 6, 5, N])), V, "offsets must be sorted") for op in OPS],
    ("head_hvp", lambda p: dict(offsets=torch.tensor([0, 5, 6, N - 1])), V,
     f"offsets must be sorted, start at 0 and end at N={N}; got first element 0 and last element {N - 1}"),
    ("head_grad", lambda p: dict(offsets=torch.tensor([0, 5, 6, N + 4])), V, f"end at N={N}"),
    ("domain_losses", lambda p: dict(offsets=torch.tensor([1, 5, 6, N])), V, "start at 0"),
    ("hutchinson_diag", lambda p: dict(offsets=torch.tensor([0, -2, 6, N])), V, "offsets must be sorted"),
    ("head_hessian_diag", lambda p: dict(offsets=torch.tensor([N])), V, "offsets must be 1-D with E+1 >= 2"),
    ("head_hessian_trace", lambda p: dict(offsets=torch.tensor([[0, N]])), V, "offsets must be 1-D"),
    ("hutchinson_trace", lambda p: dict(offsets=p.offsets.int()), V, "offsets must be int64"),
    ("head_hvp", lambda p: dict(offsets=p.offsets.double()), V, "offsets must be int64"),
    ("head_hvp", lambda p: dict(offsets=p.offsets[:-1], vectors=p.vectors[:-1]), V, "end at N="),
    # -- labels --
    *[(op, lambda p: dict(labels=_labels(p, 3, C)), V, "labels must be in [0, C=5)") for op in OPS],
    ("head_grad", lambda p: dict(labels=_labels(p, 0, -5)), V, "labels must be in [0, C=5) or equal ignore_index=-100"),
    ("head_grad", lambda p: dict(labels=_labels(p, 0, -100), ignore_index=-1), V, "labels[0]=-100"),
    ("domain_losses", lambda p: dict(labels=p.labels.int()), V, "labels must be int64"),
    ("head_hvp", lambda p: dict(labels=p.labels.double()), V, "labels must be int64"),
    ("head_hessian_diag", lambda p: dict(labels=p.labels[:-1]), V, f"labels must be 1-D of length N = {N}"),
    ("head_hessian_trace", lambda p: dict(labels=p.labels[None]), V, "labels must be 1-D"),
    # -- probes --
    ("hutchinson_diag", lambda p: dict(num_probes=0), V, "num_probes must be >= 1"),
    ("hutchinson_trace", lambda p: dict(num_probes=-3), V, "num_probes must be >= 1; got -3"),
    # -- loss options --
    *[(op, lambda p: dict(reduction="none"), V, "reduction must be 'mean' or 'sum'") for op in OPS],
    ("head_grad", lambda p: dict(label_smoothing=-0.1), V, "label_smoothing must be in [0, 1]"),
    ("hutchinson_diag", lambda p: dict(label_smoothing=1.5), V, "label_smoothing must be in [0, 1]"),
    ("head_hessian_diag", lambda p: dict(labels=None, class_weight=p.class_weight), V, "class_weight needs labels"),
    ("head_hvp", lambda p: dict(labels=None, class_weight=p.class_weight), V, "class_weight needs labels"),
    ("hutchinson_trace", lambda p: dict(labels=None, class_weight=p.class_weight), V, "class_weight needs labels"),
    ("domain_losses", lambda p: dict(class_weight=p.class_weight[:-1]), V, "class_weight must be 1-D of length C"),
    ("head_grad", lambda p: dict(class_weight=p.class_weight.clone().requires_grad_(True)), V,
     "class_weight must not require grad"),
    ("head_hessian_trace", lambda p: dict(class_tile=0), V, "class_tile must be a positive int"),
    ("head_hvp", lambda p: dict(class_tile=-4), V, "class_tile must be a positive int"),
    # -- vectors --
    ("head_hvp", lambda p: dict(vectors=torch.randn(4, C, D, dtype=torch.float64)), V,
     "vectors must have shape (E, C, D) = (3, 5, 7) or (C, D) = (5, 7)"),
    ("head_hvp", lambda p: dict(vectors=torch.randn(C, D - 1, dtype=torch.float64)), V, "vectors must have shape"),
    ("head_hvp", lambda p: dict(vectors=torch.randn(D, dtype=torch.float64)), V, "vectors must have shape"),
    ("head_hvp", lambda p: dict(vectors=p.vectors.float()), V, "vectors must have the dtype of features"),
    # -- a meta tensor among CPU ones: the call goes to the fake kernel, which applies the device rule too --
    *[(op, lambda p: dict(weight=p.weight.to("meta")), V, "weight must be on the device of features (cpu); got meta")
      for op in OPS],
    ("head_hessian_trace", lambda p: dict(bias=p.bias.to("meta")), V, "bias must be on the device of features"),
    ("head_hvp", lambda p: dict(vectors=p.vectors.to("meta")), V, "vectors must be on the device of features"),
    ("head_grad", lambda p: dict(labels=p.labels.to("meta")), V, "labels must be on the device of features"),
    ("hutchinson_trace", lambda p: dict(labels=p.labels.to("meta")), V, "labels must be on the device of features"),
    ("domain_losses", lambda p: dict(class_weight=p.class_weight.to("meta")), V,
     "class_weight must be on the device of features"),
    ("head_hessian_diag", lambda p: dict(offsets=p.offsets.to("meta")), V,
     "offsets must be on the CPU or on the device of features (cpu); got meta"),
]


def _case_id(case):
    op, _, _, fragment = case
    return f"{op}-{fragment[:40]}"


@pytest.mark.parametrize("op,overrides,exc,fragment", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input(op, overrides, exc, fragment):
    p = make_problem(SHAPE["unequal"])
    with pytest.raises(exc) as info:
        invoke(op, p, **overrides(p))
    message = str(info.value)
    assert fragment in message
    assert op in message


@pytest.mark.parametrize("op", OPS)
def test_valid_call(op):
    # The table's baseline call is valid: each case fails only because of its override.
    p = make_problem(SHAPE["unequal"])
    assert torch.isfinite(invoke(op, p)).all()


@pytest.mark.parametrize("call, fragment", [
    (lambda p: hessalign_ext.ops.logits_hvp(torch.rand(4, 3).softmax(1), torch.rand(4, device="meta"),
                                            torch.randn(4, 6)), "logits_hvp: coef must be on the device of probs"),
    (lambda p: hessalign_ext.ops.loss_rows(p.labels, p.offsets, C, dtype=torch.float64,
                                           class_weight=p.class_weight.to("meta")),
     "loss_rows: class_weight must be on the device of labels"),
    (lambda p: hessalign_ext.ops.hgp_fused(p.features, p.weight, p.bias, p.labels.to("meta"), p.offsets, alpha=1.0,
                                           beta=1.0), "hgp_fused: labels must be on the device of features"),
], ids=["logits_hvp", "loss_rows", "hgp_fused"])
def test_meta_tensor_among_cpu_ones(call, fragment):
    """The fake kernel, where such a call goes, applies the C++ device rule (not uninitialised memory)."""
    with pytest.raises(ValueError, match=re.escape(fragment)):
        call(make_problem(SHAPE["unequal"], torch.float64))
