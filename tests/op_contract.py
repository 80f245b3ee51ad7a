"""The contract every head op's tests check, written once: the forward against the reference at
every shape, dtype and device (with the result's shape), the docstring, loss options against
the reference, the closed-form backward (every small shape, loss options, float32, class tiles),
gradcheck, opcheck, torch.compile, the double-backward error and the C++ autograd kernel (no
Python below the call, gradients only where required, saved inputs changed in place); and, for
the probe ops, the probes' numbering and determinism. A test module subclasses OpContract (or ProbeContract) and
says how its op is called; its own tests (identities, other references) stay beside it.
"""

import pytest
import torch

import hessalign_ext
from hessalign_ext import reference
from conftest import (
    DEVICES, DTYPES, LOSS_CASE_IDS, LOSS_CASES, LOSS_SHAPE, SHAPE, SHAPE_IDS, SHAPES, SMALL_SHAPE_IDS, SMALL_SHAPES,
    assert_close, assert_double_backward_raises, check_backward, make_problem, python_below_op,
)


class OpContract:
    op: str  # the name in hessalign_ext, hessalign_ext.reference and torch.ops.hessalign_ext
    out: str  # the result: "domains" (E,), "pairs" (E, E) or "params" (E, C, D), as ops/_registry.register says
    labels_positional = False  # labels are required, the argument after the head (domain_losses, head_grad)

    def inputs(self, p):
        """The differentiable arguments, first in the op's signature."""
        return p.head()

    def trailing(self, p):
        """Positional arguments after offsets (the Hutchinson ops: num_probes, seed)."""
        return ()

    def call(self, impl, p, inputs=None, labels=None, trailing=None, **opts):
        """The op of impl (hessalign_ext or reference) on problem p; the loss options as keywords."""
        fn, inputs = getattr(impl, self.op), self.inputs(p) if inputs is None else inputs
        trailing = self.trailing(p) if trailing is None else trailing
        if self.labels_positional:
            return fn(*inputs, p.labels if labels is None else labels, p.offsets, *trailing, **opts)
        return fn(*inputs, p.offsets, *trailing, labels=labels, **opts)

    def schema_args(self, p, labels, ce):
        """The op's positional schema arguments, ce = (ignore_index, class_weight, label_smoothing,
        reduction, class_tile)."""
        if self.labels_positional:
            return (*self.inputs(p), labels, p.offsets, *self.trailing(p), *ce)
        return (*self.inputs(p), p.offsets, *self.trailing(p), labels, *ce)

    def out_shape(self, s):
        return {"domains": (s.E,), "pairs": (s.E, s.E), "params": (s.E, s.C, s.D)}[self.out]

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
    def test_forward(self, shape, dtype, device):
        p = make_problem(shape, dtype, device)
        out = self.call(hessalign_ext, p)
        assert out.shape == self.out_shape(shape) and out.dtype == dtype and out.device == p.features.device
        assert_close(out, self.call(reference, p), dtype, shape.id)

    def test_docstring(self):
        """The shared paragraphs (ops/_docs.py) are filled in and each keyword option is documented."""
        doc = getattr(hessalign_ext, self.op).__doc__
        assert "{" not in doc and "ValueError naming the argument" in doc
        for option in ("ignore_index", "class_weight", "label_smoothing", "reduction", "class_tile"):
            assert f"``{option}``" in doc

    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("case", LOSS_CASE_IDS)
    def test_loss_options(self, case, dtype):
        p = make_problem(LOSS_SHAPE, dtype)
        opts = LOSS_CASES[case](p)
        assert_close(self.call(hessalign_ext, p, **opts), self.call(reference, p, **opts), dtype)

    @pytest.mark.parametrize("shape", SMALL_SHAPES, ids=SMALL_SHAPE_IDS)
    def test_backward(self, shape):
        p = make_problem(shape, requires_grad=True)
        check_backward(lambda: self.call(hessalign_ext, p), lambda: self.call(reference, p), p, self.inputs(p))

    @pytest.mark.parametrize("case", ["all_together_mean", "all_together_sum", "all_ignored_domain"])
    def test_backward_loss_options(self, case):
        p = make_problem(LOSS_SHAPE, requires_grad=True)
        opts = LOSS_CASES[case](p)
        check_backward(lambda: self.call(hessalign_ext, p, **opts), lambda: self.call(reference, p, **opts), p,
                       self.inputs(p))

    def test_backward_float32(self):
        p = make_problem(SHAPE["domainbed"], torch.float32, requires_grad=True)
        check_backward(lambda: self.call(hessalign_ext, p), lambda: self.call(reference, p), p, self.inputs(p))

    @pytest.mark.parametrize("shape", [SHAPE["tiny"], SHAPE["no_bias"]], ids=["tiny", "no_bias"])
    def test_gradcheck(self, shape):
        p = make_problem(shape, requires_grad=True)
        opts = dict(labels=p.labels, label_smoothing=0.1, class_weight=p.class_weight)
        assert torch.autograd.gradcheck(lambda *inputs: self.call(hessalign_ext, p, inputs, **opts), self.inputs(p))

    @pytest.mark.parametrize("with_options", [False, True], ids=["plain", "options"])
    @pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
    def test_opcheck(self, bias, with_options):
        p = make_problem(SHAPE["unequal"] if bias else SHAPE["no_bias"], requires_grad=True)
        labels = p.labels if with_options or self.labels_positional else None
        ce = (-100, p.class_weight, 0.2, "sum", 2) if with_options else (-100, None, 0.0, "mean", 0)
        torch.library.opcheck(getattr(torch.ops.hessalign_ext, self.op).default, self.schema_args(p, labels, ce))

    @pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
    def test_compile(self, bias):
        p = make_problem(SHAPE["unequal"] if bias else SHAPE["no_bias"], requires_grad=True)
        inputs = self.inputs(p)
        present = [t for t in inputs if t is not None]

        def f(*inputs):
            return self.call(hessalign_ext, p, inputs, labels=p.labels, label_smoothing=0.1).square().sum()

        # every op's f is this one code object: without a reset, dynamo's per-code cache limit (8)
        # is reached by the fifth op and fullgraph=True then raises
        torch._dynamo.reset()
        compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
        eager_val, comp_val = f(*inputs), compiled(*inputs)
        assert_close(comp_val, eager_val)
        for a, b in zip(torch.autograd.grad(comp_val, present), torch.autograd.grad(eager_val, present)):
            assert_close(a, b)

    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("shape,tile", [("off_tile", 3), ("off_tile", 1), ("c1000", 64), ("c1000", 999)])
    def test_class_tile(self, shape, tile, dtype):
        p = make_problem(SHAPE[shape], dtype)
        opts = dict(labels=p.labels, class_weight=p.class_weight, label_smoothing=0.1)
        assert_close(self.call(hessalign_ext, p, class_tile=tile, **opts), self.call(hessalign_ext, p, **opts), dtype)

    def test_class_tile_backward(self):
        p = make_problem(SHAPE["off_tile"], requires_grad=True)
        check_backward(lambda: self.call(hessalign_ext, p, class_tile=4), lambda: self.call(hessalign_ext, p), p,
                       self.inputs(p))

    def test_double_backward_raises(self):
        p = make_problem(SHAPE["unequal"], requires_grad=True)
        assert_double_backward_raises(self.op, lambda: self.call(hessalign_ext, p), self.inputs(p))

    def test_autograd_kernel_runs_no_python(self):
        """The Autograd kernel is C++ (csrc/autograd.cpp): a call, recording a graph or not, runs
        no Python below the dispatcher (torch.library.register_autograd's kernel ran 12-83 us of
        it per call)."""
        for requires_grad in (False, True):
            p = make_problem(SHAPE["unequal"], requires_grad=requires_grad)
            args = self.schema_args(p, p.labels, (-100, None, 0.0, "mean", 0))
            out, python = python_below_op(getattr(torch.ops.hessalign_ext, self.op).default, *args)
            assert python == []
            assert (out.grad_fn is not None) == requires_grad
            if requires_grad:
                assert out.grad_fn.name() == f"hessalign_ext::{self.op}Backward"

    def test_gradients_only_for_inputs_that_require_them(self):
        p = make_problem(SHAPE["unequal"])
        inputs = self.inputs(p)
        for k, t in enumerate(inputs):
            if t is None:
                continue
            wanted = t.detach().requires_grad_(True)
            args = [wanted if j == k else x for j, x in enumerate(inputs)]
            (g,) = torch.autograd.grad(self.call(hessalign_ext, p, args).square().sum(), wanted)
            full = [x.detach().requires_grad_(True) if x is not None else None for x in inputs]
            expected = torch.autograd.grad(self.call(hessalign_ext, p, full).square().sum(), full[k])[0]
            assert_close(g, expected)

    def test_second_backward_without_retain_graph_raises(self):
        p = make_problem(SHAPE["unequal"], requires_grad=True)
        out = self.call(hessalign_ext, p).sum()
        out.backward()
        with pytest.raises(RuntimeError, match="backward through the graph a second time"):
            out.backward()

    def test_torch_func_grad(self):
        """torch.func.grad (functorch's transform) runs through the C++ Autograd kernel."""
        p = make_problem(SHAPE["unequal"])
        inputs = self.inputs(p)

        def f(weight):
            return self.call(hessalign_ext, p, [weight if k == 1 else t for k, t in enumerate(inputs)]).square().sum()

        w = inputs[1].detach().requires_grad_(True)
        assert_close(torch.func.grad(f)(inputs[1]), torch.autograd.grad(f(w), w)[0])

    def test_input_changed_in_place_before_backward_raises(self):
        """Inputs are saved as torch saves its own ops' inputs: a later in-place change is caught."""
        p = make_problem(SHAPE["unequal"], requires_grad=True)
        out = self.call(hessalign_ext, p)
        with torch.no_grad():
            p.weight.mul_(2)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            out.sum().backward()

    def test_backward_takes_the_forward_label_check(self):
        """The labels' values are checked once, in the forward (one aten::aminmax; on a GPU, a read-back):
        the node saved the labels, so the backward op it calls does not check them again. Called directly,
        the backward op checks them."""
        p = make_problem(SHAPE["unequal"], requires_grad=True)

        def label_checks(fn):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                out = fn()
            return out, sum(e.count for e in prof.key_averages() if e.key == "aten::aminmax")

        out, forward_checks = label_checks(lambda: self.call(hessalign_ext, p, labels=p.labels))
        _, backward_checks = label_checks(lambda: out.square().sum().backward())
        assert (forward_checks, backward_checks) == (1, 0)

        bad = p.labels.clone()
        bad[1] = p.weight.shape[0]
        args = self.schema_args(p, bad, (-100, None, 0.0, "mean", 0))
        backward = getattr(torch.ops.hessalign_ext, f"_{self.op}_backward").default
        with pytest.raises(ValueError, match=r"labels must be in \[0, C="):
            backward(torch.ones_like(out), *[a.detach() if isinstance(a, torch.Tensor) else a for a in args])


class ProbeContract(OpContract):
    """The Rademacher-probe ops (hutchinson_diag, hutchinson_trace): num_probes and seed follow
    offsets; the reference draws the same probes (hessalign_ext.probes)."""
    K, SEED = 3, 20240607

    def trailing(self, p):
        return (self.K, self.SEED)

    @pytest.mark.parametrize("seed", [0, -7, 2**62 + 12345, -(2**63)])
    @pytest.mark.parametrize("num_probes", [1, 2, 37])
    def test_probes_match_reference(self, num_probes, seed):
        p = make_problem(SHAPE["unequal"])
        assert_close(self.call(hessalign_ext, p, trailing=(num_probes, seed)),
                     self.call(reference, p, trailing=(num_probes, seed)))

    def test_same_seed_same_result(self):
        p = make_problem(SHAPE["domainbed"], torch.float32)
        a = self.call(hessalign_ext, p, trailing=(5, 11))
        assert torch.equal(a, self.call(hessalign_ext, p, trailing=(5, 11)))
        assert not torch.equal(a, self.call(hessalign_ext, p, trailing=(5, 12)))

    def test_many_probes(self):
        """More probes than one chunk may hold: chunked probe generation keeps the probe numbering."""
        p = make_problem(SHAPE["unequal"])
        assert_close(self.call(hessalign_ext, p, trailing=(300, 1)), self.call(reference, p, trailing=(300, 1)))
