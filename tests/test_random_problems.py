"""Property-based: every op against the float64 reference on random small problems (empty
domains, C = 1, with and without bias) with a random loss-option case from LOSS_CASES."""
import pytest
import torch

import hessalign_ext
from hessalign_ext import reference
from conftest import LOSS_CASE_IDS, LOSS_CASES, Shape, assert_close, make_problem

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is not installed")
st = hypothesis.strategies

# Fixed, reproducible examples: CI sees the same cases on every run.
SETTINGS = dict(max_examples=25, deadline=None, derandomize=True)


@st.composite
def random_cases(draw):
    """(problem, options): options from LOSS_CASES, or {} (no labels: the plain mean loss)."""
    sizes = tuple(draw(st.lists(st.integers(0, 4), min_size=1, max_size=3)))
    shape = Shape("random", sizes, C=draw(st.integers(1, 6)), d=draw(st.integers(1, 5)), bias=draw(st.booleans()))
    p = make_problem(shape, seed=draw(st.integers(0, 2**31 - 1)))
    case = draw(st.sampled_from(LOSS_CASE_IDS + ["no_labels"]))
    return p, ({} if case == "no_labels" else LOSS_CASES[case](p))


def call(impl, op, p, opts):
    f = getattr(impl, op)
    head = (p.features, p.weight, p.bias)
    if op in ("domain_losses", "head_grad"):
        opts = dict(opts)
        labels = opts.pop("labels", p.labels)
        return f(*head, labels, p.offsets, **opts)
    if op == "head_hvp":
        return f(*head, p.vectors, p.offsets, **opts)
    if op.startswith("hutchinson"):
        return f(*head, p.offsets, 3, 17, **opts)
    return f(*head, p.offsets, **opts)


@pytest.mark.parametrize("op", ["domain_losses", "head_grad", "head_hvp", "head_hessian_diag",
                                "head_hessian_trace", "head_hessian_inner", "hutchinson_diag", "hutchinson_trace"])
def test_random_problems(op):
    @hypothesis.settings(**SETTINGS)
    @hypothesis.given(random_cases())
    def check(case):
        p, opts = case
        assert_close(call(hessalign_ext, op, p, opts), call(reference, op, p, opts), torch.float64)

    check()
