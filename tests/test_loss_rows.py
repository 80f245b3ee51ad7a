"""loss_rows (the compiled per-row coefficients and targets of the penalties' plain-torch
forms) against torch's own cross_entropy: for each domain, the logits gradient of
``F.cross_entropy(logits_e, y_e, ...)`` is ``c_i softmax(l_i) − t_i`` (DESIGN.md §1), so two
gradients, at zero logits and at random ones, give c and t independently of our code. A
domain that is empty or whose rows are all ignored gives zeros (torch's mean would be NaN)."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import hessalign_ext

F64 = torch.float64
# (domain sizes, C): an empty domain, a one-row domain, a domain of all-ignored rows (the third)
SIZES = (5, 0, 4, 1, 7)
OPTIONS = {
    "plain": {},
    "ignore_index": dict(ignore_index=3),
    "class_weight": dict(class_weight=True),
    "smoothing": dict(label_smoothing=0.2),
    "sum": dict(reduction="sum"),
    "all_together_mean": dict(ignore_index=3, class_weight=True, label_smoothing=0.3),
    "all_together_sum": dict(ignore_index=3, class_weight=True, label_smoothing=0.3, reduction="sum"),
}


def problem(C=6, sizes=SIZES, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    N = sum(sizes)
    labels = torch.randint(0, C, (N,), generator=g)
    labels[::3] = -100  # ignored rows
    s = sizes[0] + sizes[1]
    labels[s:s + sizes[2]] = -100  # the third domain: every row ignored
    offsets = torch.tensor([0, *itertools.accumulate(sizes)])
    weight = torch.rand(C, generator=g, dtype=F64) + 0.5
    return labels.to(device), offsets, weight.to(device)


def options(name, labels, weight):
    """The named options; the ignored rows' labels set to their ignore_index."""
    o = dict(OPTIONS[name])
    o.setdefault("ignore_index", -100)
    if o.pop("class_weight", False):
        o["class_weight"] = weight
    labels[labels == -100] = o["ignore_index"]
    return o


def reference(labels, offsets, C, opts):
    """c and t from the logits gradients of torch's cross_entropy, one domain at a time."""
    N = labels.shape[0]
    c, t = torch.zeros(N, dtype=F64), torch.zeros(N, C, dtype=F64)
    kw = dict(weight=opts.get("class_weight"), ignore_index=opts["ignore_index"],
              label_smoothing=opts.get("label_smoothing", 0.0), reduction=opts.get("reduction", "mean"))
    random = torch.randn(N, C, generator=torch.Generator().manual_seed(5), dtype=F64)
    for s, e in zip(offsets.tolist(), offsets.tolist()[1:]):
        y = labels[s:e]
        if e == s or bool((y == opts["ignore_index"]).all()):
            continue
        grads = []
        for L in (torch.zeros(e - s, C, dtype=F64), random[s:e]):
            L = L.clone().requires_grad_(True)
            grads.append(torch.autograd.grad(F.cross_entropy(L, y, **kw), L)[0])
        dp = torch.softmax(random[s:e], 1) - 1.0 / C
        c[s:e] = ((grads[1] - grads[0]) * dp).sum(1) / (dp * dp).sum(1)
        t[s:e] = c[s:e, None] / C - grads[0]
    return c, t


@pytest.mark.parametrize("dtype", [F64, torch.float32], ids=str)
@pytest.mark.parametrize("name", OPTIONS)
def test_loss_rows_match_torch_cross_entropy(name, dtype):
    C = 6
    labels, offsets, weight = problem(C)
    opts = options(name, labels, weight)
    c, t = hessalign_ext.ops.loss_rows(labels, offsets, C, dtype=dtype, **opts)
    c_ref, t_ref = reference(labels, offsets, C, opts)
    assert c.dtype == t.dtype == dtype and t.shape == (labels.shape[0], C)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == F64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c.double(), c_ref, **tol)
    torch.testing.assert_close(t.double(), t_ref, **tol)
    ignored = labels == opts["ignore_index"]
    assert not c[ignored].any() and not t[ignored].any()


def test_loss_rows_many_domains_and_no_rows():
    """More domains than travel inline in the launch arguments (math/domains.h), and a batch of no rows."""
    labels, offsets, _ = problem(C=4, sizes=(1, 2, 0) * 30)
    c, t = hessalign_ext.ops.loss_rows(labels, offsets, 4, dtype=F64, label_smoothing=0.1)
    c_ref, t_ref = reference(labels, offsets, 4, dict(ignore_index=-100, label_smoothing=0.1))
    torch.testing.assert_close(c, c_ref)
    torch.testing.assert_close(t, t_ref)
    c, t = hessalign_ext.ops.loss_rows(torch.zeros(0, dtype=torch.int64), torch.tensor([0, 0]), 3)
    assert c.shape == (0,) and t.shape == (0, 3)


@pytest.mark.parametrize("name", ["plain", "all_together_sum"])
def test_opcheck(name):
    labels, offsets, weight = problem()
    opts = options(name, labels, weight)
    args = (labels, offsets, 6, opts["ignore_index"], opts.get("class_weight"), opts.get("label_smoothing", 0.0),
            opts.get("reduction", "mean"), F64)
    torch.library.opcheck(torch.ops.hessalign_ext.loss_rows.default, args)


@pytest.mark.parametrize("kwargs, message", [
    (dict(labels=torch.tensor([0, 6, 1])), "labels"),
    (dict(labels=torch.tensor([0, 1, 2], dtype=torch.int32)), "labels"),
    (dict(offsets=torch.tensor([0, 2])), "offsets"),
    (dict(num_classes=0), "num_classes"),
    (dict(dtype=torch.float16), "dtype"),
    (dict(class_weight=torch.ones(5, dtype=F64)), "class_weight"),
    (dict(reduction="none"), "reduction"),
    (dict(label_smoothing=1.5), "label_smoothing"),
], ids=["label_range", "label_dtype", "offsets", "num_classes", "dtype", "class_weight", "reduction", "smoothing"])
def test_bad_arguments(kwargs, message):
    args = dict(labels=torch.tensor([0, 5, 1]), offsets=torch.tensor([0, 1, 3]), num_classes=6)
    args.update(kwargs)
    labels, offsets, C = args.pop("labels"), args.pop("offsets"), args.pop("num_classes")
    with pytest.raises(ValueError, match=message):
        hessalign_ext.ops.loss_rows(labels, offsets, C, **args)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
@pytest.mark.parametrize("name", OPTIONS)
def test_loss_rows_cuda_matches_cpu(name):
    labels, offsets, weight = problem()
    opts = options(name, labels, weight)
    expected = hessalign_ext.ops.loss_rows(labels, offsets, 6, dtype=F64, **opts)
    gopts = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in opts.items()}
    got = hessalign_ext.ops.loss_rows(labels.cuda(), offsets, 6, dtype=F64, **gopts)
    for g, e in zip(got, expected):
        assert g.is_cuda
        torch.testing.assert_close(g.cpu(), e, rtol=1e-12, atol=1e-14)
