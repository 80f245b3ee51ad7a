"""hgp_fused (the HGP penalty step and its hand-written backward, one op each way) against the
independent autograd backend of penalties.hgp (double backprop through an explicit head, one
domain at a time), in float64 on random heads; its schema and fake kernels (opcheck), and
its argument checks."""
import pytest
import torch
from conftest import assert_close, python_below_op

from hessalign_ext import ops, penalties
from single_thread import one_torch_thread  # noqa: F401  (autouse fixture)

F64 = torch.float64
SIZES = {"equal": (6, 6, 6), "unequal": (5, 1, 8), "empty_domain": (4, 0, 7), "one_domain": (9,)}


def head(sizes, C=5, d=6, bias=True, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    N = sum(sizes)
    z = torch.randn(N, d, generator=g, dtype=F64).relu_()
    W = torch.randn(C, d, generator=g, dtype=F64) * d**-0.5
    b = torch.randn(C, generator=g, dtype=F64) if bias else None
    y = torch.randint(0, C, (N,), generator=g)
    off = [0, *torch.tensor(sizes).cumsum(0).tolist()]
    return [t if t is None else t.requires_grad_(requires_grad) for t in (z, W, b)], y, off


@pytest.mark.parametrize("mean_loss", [True, False], ids=["mean_loss", "mean_of_domains"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("sizes", SIZES.values(), ids=SIZES.keys())
def test_matches_autograd_backend(sizes, bias, mean_loss):
    """Value, per-domain terms and the gradients of features, weight and bias, with ignored
    rows, class weights and label smoothing."""
    C = 5
    inputs, y, off = head(sizes, C=C, bias=bias, seed=len(sizes))
    y[0] = -100
    opts = dict(label_smoothing=0.1, class_weight=torch.rand(C, dtype=F64) + 0.5)
    penalty, hess_terms, grad_terms = ops.hgp_fused(*inputs, y, off, alpha=0.7, beta=0.3, mean_loss=mean_loss, **opts)
    target = "mean_loss" if mean_loss else "mean_of_domains"
    ref, ref_terms = penalties.hgp(*inputs, y, torch.tensor(off), 0.7, 0.3, backend="autograd", mean_target=target,
                                   return_terms=True, **opts)
    assert penalty.item() > 0 or len(sizes) == 1  # one domain is its own mean: zero penalty
    assert_close(penalty, ref)
    assert_close(hess_terms.mean(), ref_terms["hessian"])
    assert_close(grad_terms.mean(), ref_terms["gradient"])
    wrt = [t for t in inputs if t is not None]
    for got, want in zip(torch.autograd.grad(penalty, wrt), torch.autograd.grad(ref, wrt)):
        assert_close(got, want)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("sizes", [SIZES["equal"], SIZES["empty_domain"]], ids=["equal", "empty_domain"])
def test_opcheck(sizes, bias):
    """Schemas, fake kernels (torch.compile's tracing) and dispatch of the forward and backward ops."""
    (z, W, b), y, off = head(sizes, bias=bias, requires_grad=False)
    ce = (-100, None, 0.1, "mean")
    torch.library.opcheck(torch.ops.hessalign_ext.hgp_fused.default, (z, W, b, y, off, 0.7, 0.3, True, *ce))
    _, _, _, saved = torch.ops.hessalign_ext.hgp_fused(z, W, b, y, off, 0.7, 0.3, True, *ce)
    for mask in ([True, True, True], [False, True, False]):
        torch.library.opcheck(torch.ops.hessalign_ext._hgp_fused_backward.default,
                              (torch.tensor(1.5, dtype=F64), z, W, b, off, 0.7, 0.3, saved, mask))


def test_offsets_as_a_tensor():
    inputs, y, off = head(SIZES["unequal"], requires_grad=False)
    for a, b in zip(ops.hgp_fused(*inputs, y, off, alpha=0.5, beta=0.5),
                    ops.hgp_fused(*inputs, y, torch.tensor(off), alpha=0.5, beta=0.5)):
        assert torch.equal(a, b)


def test_double_backward_raises():
    inputs, y, off = head(SIZES["equal"])
    penalty = ops.hgp_fused(*inputs, y, off, alpha=0.5, beta=0.5)[0]
    grads = torch.autograd.grad(penalty, inputs, create_graph=True)
    with pytest.raises(RuntimeError, match="hgp_fused: double backward"):
        torch.autograd.grad(grads[0].sum(), inputs)


def test_autograd_is_cpp_and_keeps_the_saved_list():
    """No Python below the op's call, grad or not (csrc/autograd.cpp); the node holds the forward's
    saved list, so the gradients are those of the Python-level call."""
    for requires_grad in (False, True):
        inputs, y, off = head(SIZES["unequal"], requires_grad=requires_grad)
        args = (*inputs, y, off, 0.5, 0.5, True, -100, None, 0.0, "mean")
        (penalty, hess_terms, grad_terms, saved), python = python_below_op(torch.ops.hessalign_ext.hgp_fused.default,
                                                                             *args)
        assert python == []
        assert (penalty.grad_fn is not None) == requires_grad
        assert not hess_terms.requires_grad and not grad_terms.requires_grad
    expected = torch.autograd.grad(ops.hgp_fused(*inputs, y, off, alpha=0.5, beta=0.5)[0], inputs)
    for got, want in zip(torch.autograd.grad(penalty, inputs), expected):
        assert_close(got, want)


def test_second_backward_without_retain_graph_raises():
    """The node frees the saved list with the inputs; a second backward gets torch's own error."""
    inputs, y, off = head(SIZES["equal"])
    penalty = ops.hgp_fused(*inputs, y, off, alpha=0.5, beta=0.5)[0]
    penalty.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        penalty.backward()


def _forward(z, W, b, y, off, **kw):
    return ops.hgp_fused(z, W, b, y, off, alpha=0.5, beta=0.5, **kw)


@pytest.mark.parametrize("case, message", [
    (lambda z, W, b, y, off: _forward(z, W, b, y, [0, 5, 3, 18]), "offsets"),
    (lambda z, W, b, y, off: _forward(z, W, b, y, [0, 6, 17]), "offsets"),
    (lambda z, W, b, y, off: _forward(z, W, b, y, [18]), "offsets"),
    (lambda z, W, b, y, off: _forward(z, W, b, y.clamp(max=3) + 2, off), "labels"),
    (lambda z, W, b, y, off: _forward(z, W, b, y[:-1], off), "labels"),
    (lambda z, W, b, y, off: _forward(z, W, b, y.int(), off), "labels"),
    (lambda z, W, b, y, off: _forward(z, W.float(), b, y, off), "weight"),
    (lambda z, W, b, y, off: _forward(z.bfloat16(), W.float(), b.float(), y, off), "features"),
    (lambda z, W, b, y, off: _forward(z, W[:, :-1], b, y, off), "weight"),
    (lambda z, W, b, y, off: _forward(z, W, b[:-1], y, off), "bias"),
    (lambda z, W, b, y, off: _forward(z, W, b, y, off, class_weight=torch.ones(2, dtype=F64)), "class_weight"),
    (lambda z, W, b, y, off: _forward(z, W, b, y, off, label_smoothing=1.5), "label_smoothing"),
    (lambda z, W, b, y, off: _forward(z, W, b, y, off, reduction="none"), "reduction"),
    (lambda z, W, b, y, off: torch.ops.hessalign_ext._hgp_fused_backward(
        torch.ones(2, dtype=F64), z, W, b, off, 0.5, 0.5, _saved(z, W, b, y, off), [True] * 3), "grad"),
    (lambda z, W, b, y, off: torch.ops.hessalign_ext._hgp_fused_backward(
        torch.tensor(1.0, dtype=F64), z, W, b, off, 0.5, 0.5, _saved(z, W, b, y, off)[:-1], [True] * 3), "saved"),
    (lambda z, W, b, y, off: torch.ops.hessalign_ext._hgp_fused_backward(
        torch.tensor(1.0, dtype=F64), z, W, b, off, 0.5, 0.5, _saved_with(z, W, b, y, off, 1, lambda t: t[:, :-1]),
        [True] * 3), r"saved\[1\] must have shape"),
    (lambda z, W, b, y, off: torch.ops.hessalign_ext._hgp_fused_backward(
        torch.tensor(1.0, dtype=F64), z, W, b, off, 0.5, 0.5, _saved_with(z, W, b, y, off, 0, lambda t: t.float()),
        [True] * 3), r"saved\[0\] must have dtype"),
    (lambda z, W, b, y, off: torch.ops.hessalign_ext._hgp_fused_backward(
        torch.tensor(1.0, dtype=F64), z, W, b, off, 0.5, 0.5, _saved(z, W, b, y, [0, 18]),
        [True] * 3), r"saved\[7\] must have shape"),
], ids=["offsets_unsorted", "offsets_end", "offsets_single", "labels_range", "labels_length", "labels_dtype",
        "weight_dtype", "bf16_features_f32_head", "weight_shape", "bias_shape", "class_weight_length",
        "label_smoothing", "reduction",
        "backward_grad", "backward_saved", "backward_saved_probs_shape", "backward_saved_coef_dtype",
        "backward_saved_other_domains"])
def test_bad_arguments(case, message):
    (z, W, b), y, off = head(SIZES["equal"], C=4, requires_grad=False)
    with pytest.raises(ValueError, match=message):
        case(z, W, b, y, off)


def _saved(z, W, b, y, off):
    return torch.ops.hessalign_ext.hgp_fused(z, W, b, y, off, 0.5, 0.5, True, -100, None, 0.0, "mean")[3]


def _saved_with(z, W, b, y, off, index, change):
    saved = _saved(z, W, b, y, off)
    saved[index] = change(saved[index])
    return saved
