"""hessalign_ext.penalties: the kernel backend against the independent autograd backend.

HGP, the exact-diagonal Hutchinson penalty and the Frobenius alignment are deterministic:
both backends must give the same value and the same gradients with respect to features,
weight and bias in float64, to rounding. Hutchinson with probes draws different probes in
each backend, so the two estimates are held to a statistical bound (module docstring of
the test below), and the kernel's own estimate is checked to rounding against the
reference computed with the very probes it drew.
"""

from __future__ import annotations

import pytest
import torch
from conftest import TOL, assert_close

from hessalign_ext import head_hessian_inner, penalties, reference
from hessalign_ext.penalties import autograd_reference, hgp_gram
from single_thread import one_torch_thread  # noqa: F401  (autouse fixture)

F64 = torch.float64
SIZES = (5, 1, 8)  # unequal domains, one of them a single row
OPTION_CASES = {
    "plain": {},
    "ignore_index": {"ignore_index": -100, "_ignore_rows": [0, 6]},
    "class_weight": {"class_weight": "random"},
    "label_smoothing": {"label_smoothing": 0.2},
    "sum_all": {"class_weight": "random", "label_smoothing": 0.1, "reduction": "sum", "_ignore_rows": [2]},
}


def problem(seed=0, C=4, d=5, bias=True, sizes=SIZES):
    g = torch.Generator().manual_seed(seed)
    N = sum(sizes)
    features = torch.randn(N, d, generator=g, dtype=F64).requires_grad_(True)
    weight = (torch.randn(C, d, generator=g, dtype=F64) * d**-0.5).requires_grad_(True)
    b = torch.randn(C, generator=g, dtype=F64).requires_grad_(True) if bias else None
    labels = torch.randint(0, C, (N,), generator=g)
    offsets = torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()])
    return features, weight, b, labels, offsets


def options(case, labels, C, seed=0):
    """(labels, loss keywords) of an OPTION_CASES entry."""
    spec = dict(OPTION_CASES[case])
    labels = labels.clone()
    labels[spec.pop("_ignore_rows", [])] = -100
    if spec.get("class_weight") == "random":
        spec["class_weight"] = torch.rand(C, generator=torch.Generator().manual_seed(seed), dtype=F64) + 0.5
    return labels, spec


def grads(value, inputs):
    return torch.autograd.grad(value, [t for t in inputs if t is not None])


def assert_same(kernel_value, autograd_value, inputs):
    assert_close(kernel_value, autograd_value)
    for gk, ga in zip(grads(kernel_value, inputs), grads(autograd_value, inputs)):
        assert_close(gk, ga)


@pytest.mark.parametrize("method", ["gram", "fused", "ops"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("mean_target", ["mean_loss", "mean_of_domains"])
@pytest.mark.parametrize("C", [2, 4, 9])
def test_hgp_backends_agree(bias, mean_target, method, C):
    """C = 2 takes the fused form's one concatenated GEMM for the features' gradient, C = 9
    its accumulated GEMMs (DomainRows::weighted_sum, csrc/host/hgp_fused.h)."""
    z, W, b, y, off = problem(bias=bias, C=C)
    kw = dict(alpha=0.7, beta=0.3, mean_target=mean_target)
    kernel = penalties.hgp(z, W, b, y, off, backend="kernel", method=method, **kw)
    auto = penalties.hgp(z, W, b, y, off, backend="autograd", **kw)
    assert kernel.item() > 0
    assert_same(kernel, auto, (z, W, b))


@pytest.mark.parametrize("C", [2, 6])
@pytest.mark.parametrize("sizes", [(4, 4, 4), (3, 0, 5), (7,)], ids=["equal", "empty_domain", "one_domain"])
@pytest.mark.parametrize("mean_target", ["mean_loss", "mean_of_domains"])
def test_hgp_kernel_forms_agree(sizes, mean_target, C):
    """The three exact forms of the kernel backend: equal domains (batched blocks), an empty
    domain (every form counts it, with g_e = 0, in the mean) and one domain; the per-domain
    terms too, with ignored rows and label smoothing."""
    z, W, b, y, off = problem(seed=5, sizes=sizes, C=C)
    y[1] = -100
    kw = dict(alpha=0.6, beta=0.4, mean_target=mean_target, label_smoothing=0.1, return_terms=True)
    for method in ("gram", "fused"):
        ops, ops_terms = penalties.hgp(z, W, b, y, off, method="ops", **kw)
        value, terms = penalties.hgp(z, W, b, y, off, method=method, **kw)
        assert_same(value, ops, (z, W, b))
        for key in ("hessian", "gradient"):
            assert_close(terms[key], ops_terms[key])


@pytest.mark.parametrize("sizes", [(4, 4, 4), SIZES], ids=["equal", "unequal"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_hgp_forms_agree_with_an_all_ignored_domain(sizes, reduction):
    """A domain whose every label is ignore_index has D_e = 0 and contributes g_e = 0 (the
    ops' convention, DESIGN.md §1); with class weights and label smoothing the per-row
    coefficients of every form (penalties.common.loss_rows) match the compiled ops."""
    z, W, b, y, off = problem(seed=11, sizes=sizes)
    y[:sizes[0]] = -100
    kw = dict(alpha=0.6, beta=0.4, label_smoothing=0.1, reduction=reduction,
              class_weight=torch.rand(W.shape[0], generator=torch.Generator().manual_seed(2), dtype=F64) + 0.5)
    for method in ("gram", "fused"):
        ops = penalties.hgp(z, W, b, y, off, method="ops", **kw)
        value = penalties.hgp(z, W, b, y, off, method=method, **kw)
        assert value.item() > 0
        assert_same(value, ops, (z, W, b))


@pytest.mark.parametrize("method", ["gram", "fused"])
def test_hgp_forms_pass_gradcheck(method):
    """The hand-written backward of the fused form (and the Gram form's) against finite
    differences of its own forward, in float64. With mean_target="mean_of_domains" the
    detached targets are the means of g_e and H_e g_e, where Σ_e ‖x_e − mean‖² has zero
    derivative in the mean, so detaching them changes nothing and finite differences apply
    (with "mean_loss" they do not: test_hgp_backends_agree covers it)."""
    z, W, b, y, off = problem(seed=12, C=3, d=4)
    kw = dict(alpha=0.8, beta=0.2, mean_target="mean_of_domains", method=method, label_smoothing=0.1)
    assert torch.autograd.gradcheck(lambda z, W, b: penalties.hgp(z, W, b, y, off, **kw), (z, W, b))


def test_hgp_forms_with_no_rows():
    """A batch with no rows at all (two empty domains): every form gives 0 and zero gradients."""
    z, W, b, y, off = problem(seed=14, sizes=(0, 0))
    for method in ("gram", "fused", "ops"):
        value = penalties.hgp(z, W, b, y, off, method=method)
        assert value.item() == 0
        for grad, like in zip(grads(value, (z, W, b)), (z, W, b)):
            assert grad.shape == like.shape and not grad.any()


@pytest.mark.parametrize("sizes", [(4, 4, 4), SIZES], ids=["equal", "unequal"])
def test_loss_rows_without_labels(sizes):
    """No labels: every row weighs 1, c_i = 1/D_e (D_e its domain's rows), t = 0, whatever
    the label smoothing (DESIGN.md §1, as the curvature ops without labels)."""
    from hessalign_ext.penalties.common import loss_options, loss_rows

    offs = torch.tensor([0, *torch.tensor(sizes).cumsum(0).tolist()]).tolist()
    c, t, domains = loss_rows(None, offs, 3, loss_options(label_smoothing=0.3), F64, torch.device("cpu"))
    expected = torch.cat([torch.full((n,), 1.0 / n, dtype=F64) for n in sizes])
    assert_close(c, expected)
    assert not t.any() and t.shape == (sum(sizes), 3)
    assert_close(domains.sum(c), torch.ones(len(sizes), dtype=F64))


def test_hgp_fused_form_under_torch_compile():
    """torch.compile (aot_eager; the offsets and the label check break the graph) around the
    fused form's autograd.Function and its two ops (traced through their fake kernels): value
    and gradients equal eager."""
    z, W, b, y, off = problem(seed=13, C=4)

    def step(z, W, b):
        return penalties.hgp(z, W, b, y, off, 0.5, 0.5, method="fused")

    eager = step(z, W, b)
    compiled = torch.compile(step, backend="aot_eager")(z, W, b)
    assert_same(compiled, eager, (z, W, b))


def test_hgp_fused_form_gradient_subsets_and_layouts():
    """Frozen features or a frozen head (only the asked-for gradients), and non-contiguous
    features, against the autograd backend."""
    z, W, b, y, off = problem(seed=8, C=3)
    zt = z.detach().t().contiguous().t().requires_grad_(True)  # column-major (N, d)
    for inputs in ((z.detach(), W, b), (z, W.detach(), b.detach()), (zt, W, b)):
        value = penalties.hgp(*inputs, y, off, 0.5, 0.5, method="fused")
        auto = penalties.hgp(*inputs, y, off, 0.5, 0.5, backend="autograd")
        assert_same(value, auto, [t for t in inputs if t.requires_grad])


def test_hgp_fused_form_in_bfloat16_on_the_cpu():
    """bfloat16 inputs on the CPU, whose kernels run float32 and float64 only: the step runs in
    float32 (ops.hgp_fused casts the head up and the results back); the value and the gradients
    stay within a bfloat16 bound of float64."""
    z, W, b, y, off = problem(seed=5, C=6, d=16, sizes=(20, 12, 16))
    truth = penalties.hgp(z, W, b, y, off, 0.5, 0.5, method="fused")
    low = [t.detach().bfloat16().requires_grad_(True) for t in (z, W, b)]
    value = penalties.hgp(*low, y, off, 0.5, 0.5, method="fused")
    assert value.dtype == torch.bfloat16
    torch.testing.assert_close(value.double(), truth.detach(), rtol=5e-2, atol=0)
    for g_low, g in zip(grads(value, low), grads(truth, (z, W, b))):
        assert (g_low.double() - g).norm() <= 5e-2 * g.norm()


def test_hgp_auto_method_picks_the_cheaper_form():
    # CPU, DomainBed heads: 3×32 rows, D = 2049: few classes -> fused, many -> Gram; too many rows -> fused
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert hgp_gram.choose(96, 7, 2049, cpu) == "fused" and hgp_gram.choose(96, 65, 2049, cpu) == "gram"
    assert hgp_gram.choose(96, 35, 2049, cpu) == "fused" and hgp_gram.choose(96, 36, 2049, cpu) == "gram"
    # d = 512: the fused form up to C = 65, the Gram form from C = 120; a narrow head: fused
    assert hgp_gram.choose(96, 65, 513, cpu) == "fused" and hgp_gram.choose(96, 120, 513, cpu) == "gram"
    assert hgp_gram.choose(96, 345, 129, cpu) == "fused" and hgp_gram.choose(64, 1000, 41, cpu) == "fused"
    assert hgp_gram.choose(hgp_gram.MAX_ROWS + 1, 10**6, 10**4, cpu) == "fused"
    assert hgp_gram.choose(96, 345, 2049, cuda) == "fused"  # launch-bound on a GPU: fewer launches
    for C, d, method in ((200, 600, "gram"), (2, 40, "fused")):
        z, W, b, y, off = problem(seed=6, C=C, d=d, sizes=(30, 34))
        assert hgp_gram.choose(64, C, d + 1, cpu) == method
        assert torch.equal(penalties.hgp(z, W, b, y, off), penalties.hgp(z, W, b, y, off, method=method))


def aligned_problem(n, d, C, seed=7):
    """Three nearly identical domains (features 1e-3 apart, same labels), float64: the regime
    training drives the alignment penalties towards."""
    g = torch.Generator().manual_seed(seed)
    base = torch.relu(torch.randn(n, d, generator=g, dtype=F64) + 0.5) * 2
    z64 = torch.cat([base + 1e-3 * torch.randn(n, d, generator=g, dtype=F64) for _ in range(3)])
    W64 = torch.randn(C, d, generator=g, dtype=F64) * d**-0.5
    b64 = torch.randn(C, generator=g, dtype=F64) * 0.1
    y = torch.randint(0, C, (n,), generator=g).repeat(3)
    return (z64, W64, b64), y, torch.tensor([0, n, 2 * n, 3 * n])


def float32_errors(penalty, head):
    """Relative errors of the value and the gradients (features, weight, bias) from float32
    inputs against the float64 computation."""
    inputs64, y, off = aligned_problem(*head)

    def run(dtype):
        inputs = [t.to(dtype).requires_grad_(True) for t in inputs64]
        value = penalty(*inputs, y, off)
        return [value, *torch.autograd.grad(value, inputs)]

    return [((got.double() - truth).norm() / truth.norm()).item() for got, truth in zip(run(torch.float32), run(F64))]


@pytest.mark.parametrize("mean_target", ["mean_loss", "mean_of_domains"])
@pytest.mark.parametrize("method, head, grad_tol", [
    ("gram", (16, 64, 10), 1e-3), ("fused", (16, 64, 10), 1e-3), ("ops", (16, 64, 10), 5e-2),
    ("gram", (32, 512, 7), 1e-3), ("fused", (32, 512, 7), 1e-3)])
def test_hgp_exact_when_domains_align(method, head, grad_tol, mean_target):
    """Near-identical domains make ‖H_e g_e − T‖² small. The head's gradient there is a sum
    over domains that nearly cancels (Σ_e J_e (H_e g_e − T) with Σ_e (H_e g_e − T) ≈ 0). From
    float32 inputs the Gram form (float64 inside) and the fused form (H_e g_e − T formed from
    g_e − ḡ and centred blocks) stay within 1e-3 of float64, value and gradients, at a small
    and at a DomainBed-sized head. The ops form forms H_e g_e and T apart: its head gradient
    is off by 2.4e-2 on the small head with ATen's GEMMs, 3.3e-2 with the CPU's few-classes
    kernel, which rounds its logits differently (by 62-75% on the DomainBed one; the autograd
    backend's by 180-210%)."""
    errors = float32_errors(lambda *a: penalties.hgp(*a, 1.0, 1.0, method=method, mean_target=mean_target), head)
    assert errors[0] < 1e-3 and errors[1] < 1e-3, errors      # value, features
    assert max(errors[2:]) < grad_tol, errors                  # weight, bias


@pytest.mark.parametrize("head", [(16, 64, 10), (32, 512, 7)], ids=["small", "domainbed"])
@pytest.mark.parametrize("penalty", ["hutchinson_exact", "full"])
def test_exact_alignment_penalties_when_domains_align(penalty, head):
    """The exact-diagonal Hutchinson penalty (its deviations by _sqdev: its head gradient was
    off by 10-17% against a detached mean) and the whole-Hessian alignment (its E×E inner
    products in float64: value off by 26-160% and gradients by 60-300% in float32) stay within
    1e-3 of float64 from float32 inputs on nearly identical domains."""
    fn = {"hutchinson_exact": lambda *a: penalties.hutchinson(*a, 1.0, 1.0, num_probes=None),
          "full": lambda *a: penalties.hessian_alignment_full(*a, 1.0, 1.0)}[penalty]
    errors = float32_errors(fn, head)
    assert max(errors) < 1e-3, errors


@pytest.mark.parametrize("cpu_gemm, bound", [("aten", 1e-3), ("auto", 3e-3)])
def test_exact_hutchinson_when_domains_align_at_a_larger_head(cpu_gemm, bound, monkeypatch):
    """At 3×32 rows, d = 512, C = 65 auto mode may run the op's float32 GEMMs on oneDNN where
    it runs (README, "CPU GEMMs"), which rounds the logits a little worse than MKL: on the
    project's machine the penalty's errors were 0.7-0.9e-3 with ATen's GEMMs and 1.3-2.2e-3
    with oneDNN's (value, features, weight, bias), whence the second bound."""
    monkeypatch.setenv("HESSALIGN_CPU_GEMM", cpu_gemm)
    errors = float32_errors(lambda *a: penalties.hutchinson(*a, 1.0, 1.0, num_probes=None), (32, 512, 65))
    assert max(errors) < bound, errors


PENALTY_STEPS = {
    "hgp_gram": lambda *a: penalties.hgp(*a, method="gram"),
    "hgp_fused": lambda *a: penalties.hgp(*a, method="fused"),
    "hgp_ops": lambda *a: penalties.hgp(*a, method="ops"),
    "hutchinson_exact": lambda *a: penalties.hutchinson(*a, num_probes=None),
    "hutchinson_probes": lambda *a: penalties.hutchinson(*a, num_probes=4),
    "full": lambda *a: penalties.hessian_alignment_full(*a),
    "fishr": lambda *a: penalties.gradient_variance(*a).square().sum(),
}


@pytest.mark.parametrize("step", PENALTY_STEPS)
def test_penalty_backward_checks_no_labels(step):
    """A penalty step's backward checks no labels again (each op's node takes its forward's check,
    csrc/checks.h's ForwardCheckedLabels): every labels' value check (an aminmax, and on a GPU a
    read-back) is in the forward."""
    from torch.profiler import ProfilerActivity, profile

    def label_checks(fn):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = fn()
        return out, sum(e.count for e in prof.key_averages() if e.key == "aten::aminmax")

    args = problem()
    value, forward = label_checks(lambda: PENALTY_STEPS[step](*args))
    _, backward = label_checks(lambda: value.backward())
    assert forward >= 1 and backward == 0, (forward, backward)


def test_hgp_mean_targets_differ():
    """The reference's target H̄ḡ is not the mean of the H_e g_e (PAPER.md): the option matters."""
    z, W, b, y, off = problem()
    a = penalties.hgp(z, W, b, y, off, 1.0, 0.0, mean_target="mean_loss")
    m = penalties.hgp(z, W, b, y, off, 1.0, 0.0, mean_target="mean_of_domains")
    assert abs(a.item() - m.item()) > 1e-3 * abs(a.item())


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_loss_options_pass_through(case):
    """Every loss option reaches both backends the same way, and changes the penalty."""
    z, W, b, y, off = problem(seed=1)
    labels, opts = options(case, y, W.shape[0])
    for fn, kw in ((penalties.hgp, {"method": "gram"}), (penalties.hgp, {"method": "fused"}),
                   (penalties.hgp, {"method": "ops"}),
                   (penalties.hutchinson, {"num_probes": None}), (penalties.hessian_alignment_full, {})):
        kernel = fn(z, W, b, labels, off, 0.5, 0.5, backend="kernel", **kw, **opts)
        auto = fn(z, W, b, labels, off, 0.5, 0.5, backend="autograd", **kw, **opts)
        assert_same(kernel, auto, (z, W, b))
        if opts:
            plain = fn(z, W, b, y, off, 0.5, 0.5, **kw)
            assert abs(kernel.item() - plain.item()) > 1e-6 * abs(plain.item()), fn.__name__


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_hutchinson_exact_diagonal_backends_agree(bias):
    z, W, b, y, off = problem(seed=2, bias=bias)
    kernel = penalties.hutchinson(z, W, b, y, off, 0.9, 0.2, num_probes=None, backend="kernel")
    auto = penalties.hutchinson(z, W, b, y, off, 0.9, 0.2, num_probes=None, backend="autograd")
    assert_same(kernel, auto, (z, W, b))


def test_hutchinson_kernel_uses_its_probes_exactly():
    """With probes, the kernel penalty equals the one built from the reference estimates that
    use the same counter-based probes (seed for the domains, mean_probe_seed(seed) for the mean)."""
    z, W, b, y, off = problem(seed=3)
    K, seed, alpha, beta = 7, 11, 0.8, 0.4
    kernel = penalties.hutchinson(z, W, b, y, off, alpha, beta, num_probes=K, seed=seed)
    d = reference.hutchinson_diag(z, W, b, off, K, seed, labels=y)
    d_bar = reference.hutchinson_diag(z, W, b, off, K, penalties.mean_probe_seed(seed), labels=y).mean(0).detach()
    g = reference.head_grad(z, W, b, y, off)
    E = len(SIZES)
    expected = (alpha * (d - d_bar).pow(2).sum((1, 2)) + beta * (g - g.detach().mean(0)).pow(2).sum((1, 2))).sum() / E
    assert_same(kernel, expected, (z, W, b))


def _explicit_hessians(z, W, b, y, off):
    """(E, C·D, C·D) Hessians by autograd, for the statistical bounds."""
    Wd, bd = W.detach().requires_grad_(True), b.detach().requires_grad_(True)
    params = [Wd, bd]
    _, gs = autograd_reference.autograd_domain_grads(z.detach(), Wd, bd, params, y, off.tolist(),
                                             penalties.loss_options())
    return torch.stack([autograd_reference.autograd_full_hessian(g, params) for g in gs]).detach()


def test_hutchinson_estimates_within_statistical_bound():
    """Rademacher probes: one probe's estimate of diag(H)_j has variance Σ_{k≠j} H_jk², so
    the K-probe mean has standard deviation σ_j = sqrt(Σ_{k≠j} H_jk² / K). The kernel's and
    the autograd backend's estimates (independent probes) each lie within 5σ_j of the exact
    diagonal, and within 5·sqrt(2)·σ_j of each other, at every element (a false failure has
    probability below 1e-4 over the 3·4·6 elements)."""
    z, W, b, y, off = problem(seed=4)
    K = 300
    H = _explicit_hessians(z, W, b, y, off)
    exact = torch.diagonal(H, dim1=1, dim2=2)
    sigma = ((H.pow(2).sum(2) - exact.pow(2)) / K).sqrt()
    from hessalign_ext import ops

    kernel = ops.hutchinson_diag(z.detach(), W.detach(), b.detach(), off, K, 5, labels=y).reshape(exact.shape)
    Wd, bd = W.detach().requires_grad_(True), b.detach().requires_grad_(True)
    _, gs = autograd_reference.autograd_domain_grads(z.detach(), Wd, bd, [Wd, bd], y, off.tolist(),
                                                     penalties.loss_options())
    gen = torch.Generator().manual_seed(5)
    auto = torch.stack([penalties.hutchinson_diag_autograd(g, [Wd, bd], K, gen, create_graph=False)
                        for g in gs]).reshape(exact.shape)
    assert (sigma > 0).all()
    assert ((kernel - exact).abs() <= 5 * sigma).all()
    assert ((auto - exact).abs() <= 5 * sigma).all()
    assert ((kernel - auto).abs() <= 5 * 2**0.5 * sigma).all()
    assert not torch.allclose(kernel, exact, **TOL[F64])  # the estimate is noisy: a real check


def test_hutchinson_penalty_bias():
    """DESIGN.md §1: with K probes the Hessian term is biased upward by, in expectation,
    (α/(E K)) Σ_e (‖offdiag H_e‖_F² + ‖offdiag H̄‖_F²). The mean over S seeds of the kernel
    penalty matches exact + bias within 5 standard errors, and misses the exact value."""
    z, W, b, y, off = problem(seed=6)
    K, S, alpha = 4, 400, 1.0
    H = _explicit_hessians(z, W, b, y, off)
    Hbar = H.mean(0)

    def offdiag_sq(M):
        return M.pow(2).sum() - torch.diagonal(M).pow(2).sum()

    E = H.shape[0]
    bias = alpha / (E * K) * sum(offdiag_sq(H[e]) + offdiag_sq(Hbar) for e in range(E))
    zd, Wd, bd = z.detach(), W.detach(), b.detach()
    exact = penalties.hutchinson(zd, Wd, bd, y, off, alpha, 0.0, num_probes=None)
    samples = torch.stack([penalties.hutchinson(zd, Wd, bd, y, off, alpha, 0.0, num_probes=K, seed=s)
                           for s in range(S)])
    se = samples.std() / S**0.5
    assert abs(samples.mean() - (exact + bias)) <= 5 * se
    assert abs(samples.mean() - exact) > 5 * se


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_hessian_alignment_full_matches_explicit_hessians(bias):
    z, W, b, y, off = problem(seed=7, C=3, d=3, bias=bias)
    kernel = penalties.hessian_alignment_full(z, W, b, y, off, 0.6, 0.2, backend="kernel")
    auto = penalties.hessian_alignment_full(z, W, b, y, off, 0.6, 0.2, backend="autograd")
    assert kernel.item() > 0
    assert_same(kernel, auto, (z, W, b))


@pytest.mark.parametrize("method", ["samples", "features"])
def test_head_hessian_inner_torch_matches_reference(method):
    z, W, b, y, off = problem(seed=8, C=3, d=4)
    labels, opts = options("sum_all", y, 3)
    got = penalties.head_hessian_inner_torch(z, W, b, off, labels=labels, method=method, **opts)
    expected = reference.head_hessian_inner(z, W, b, off, labels=labels, **opts)
    assert_same(got.sum(), expected.sum(), (z, W, b))
    assert_close(got, expected)


@pytest.mark.parametrize("method", ["samples", "features"])
def test_head_hessian_inner_torch_keeps_confident_rows(method):
    """Rows with nearly all their mass on one class (p̄ ≈ 1e-6): in float32 both routes give every
    entry, and the gradients, to float32's relative precision (against the float64 op, itself checked
    at 60 digits in test_head_hessian_inner.py); written with p − p², they lost every digit."""
    g = torch.Generator().manual_seed(11)
    N, d, C = 6, 8, 4
    z = torch.randn(N, d, generator=g, dtype=torch.float64)
    logits = 14.0 * torch.nn.functional.one_hot(torch.tensor([0, 0, 2, 0, 2, 1]), C) + torch.rand(N, C, generator=g)
    W = torch.linalg.lstsq(z, logits.double()).solution.T.contiguous()
    off = torch.tensor([0, 4, 6])
    expected = head_hessian_inner(z, W, None, off)
    z32, W32 = z.float().requires_grad_(), W.float().requires_grad_()
    got = penalties.head_hessian_inner_torch(z32, W32, None, off, method=method)
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=0)
    zr, Wr = z.clone().requires_grad_(), W.clone().requires_grad_()
    ref = torch.autograd.grad(head_hessian_inner(zr, Wr, None, off).sum(), (zr, Wr))
    for a, e in zip(torch.autograd.grad(got.sum(), (z32, W32)), ref):
        torch.testing.assert_close(a.double(), e, rtol=1e-3, atol=1e-3 * e.abs().max().item())


def test_gradient_variance_matches_per_sample_gradients():
    """Fishr's per-domain variance of per-sample head gradients, against an explicit loop."""
    z, W, b, y, off = problem(seed=9)
    got = penalties.gradient_variance(z, W, b, y, off)
    per_sample = []
    for i in range(z.shape[0]):
        loss = torch.nn.functional.cross_entropy(torch.nn.functional.linear(z[i:i + 1], W, b), y[i:i + 1])
        gw, gb = torch.autograd.grad(loss, [W, b], create_graph=True)
        per_sample.append(torch.cat([gw, gb[:, None]], 1))
    per_sample = torch.stack(per_sample)
    expected = torch.stack([per_sample[s:t].var(0, unbiased=False) for s, t in zip(off.tolist(), off.tolist()[1:])])
    assert_same(got.sum(), expected.sum(), (z, W, b))
    assert_close(got, expected)


def _bad_label(y):
    return y.clamp(max=3) + 1  # C = 4 in problem(): one row labelled 4


@pytest.mark.parametrize("call, message", [
    (lambda z, W, b, y, off: penalties.hgp(z, W, b, y, off, backend="magic"), "hgp: backend"),
    (lambda z, W, b, y, off: penalties.hgp(z, W, b, y, off[:-1], backend="autograd"), "hgp: offsets"),
    (lambda z, W, b, y, off: penalties.hutchinson(z, W, b, y, off, num_probes=0), "hutchinson: num_probes"),
    (lambda z, W, b, y, off: penalties.hgp(z, W, b, y, off, mean_target="median"), "hgp: mean_target"),
    (lambda z, W, b, y, off: penalties.hgp(z, W, b, y, off, reduction="none"), "hgp: reduction"),
    (lambda z, W, b, y, off: penalties.hgp(z, W, b, y, off, method="fast"), "hgp: method"),
    (lambda z, W, b, y, off: penalties.hgp(z, W, b, _bad_label(y), off, method="gram"), "hgp: labels"),
    (lambda z, W, b, y, off: penalties.hgp(z, W, b, y.int(), off, method="gram"), "hgp: labels must be int64"),
    (lambda z, W, b, y, off: penalties.hgp(z, W, b, y, off, method="gram", class_weight=[1.0, 2.0]),
     "hgp: class_weight"),
    (lambda z, W, b, y, off: penalties.hgp(z, W, b, _bad_label(y), off, method="fused"), "hgp: labels"),
    (lambda z, W, b, y, off: penalties.hgp(z, W, b, y, off, method="fused", class_weight=[1.0, 2.0]),
     "hgp: class_weight"),
    (lambda z, W, b, y, off: penalties.hgp(z, W.float(), b, y, off, method="fused"), "hgp: weight"),
    (lambda z, W, b, y, off: penalties.hgp(z, W, b.float(), y, off, method="fused"), "hgp: bias"),
    # the autograd backend: its cross_entropy would raise an IndexError naming neither penalty nor argument
    (lambda z, W, b, y, off: penalties.hgp(z, W, b, _bad_label(y), off, backend="autograd"),
     r"hgp: labels must be in \[0, C=4\) or equal ignore_index=-100; got values in \[1, 4\]"),
    (lambda z, W, b, y, off: penalties.hutchinson(z, W, b, _bad_label(y), off, backend="autograd"),
     "hutchinson: labels must be in"),
    (lambda z, W, b, y, off: penalties.hessian_alignment_full(z, W, b, _bad_label(y), off, backend="autograd"),
     "hessian_alignment_full: labels must be in"),
    (lambda z, W, b, y, off: penalties.hutchinson(z, W, b, y, off, class_weight=[1.0, 2.0]),
     r"hutchinson: class_weight must be \(C=4,\)"),
    (lambda z, W, b, y, off: penalties.hessian_alignment_full(z, W[:, :-1], b, y, off),
     "hessian_alignment_full: weight"),
    (lambda z, W, b, y, off: penalties.gradient_variance(z, W, b, y, off.flip(0)), "gradient_variance: offsets"),
    (lambda z, W, b, y, off: penalties.hgp(z, W, b, None, off), "hgp: labels are required"),
    (lambda z, W, b, y, off: penalties.head_hessian_inner_torch(z, W, b, off, method="fast"),
     "head_hessian_inner_torch: method"),
], ids=["backend", "offsets", "num_probes", "mean_target", "reduction", "method", "gram_label_range",
        "gram_label_dtype", "gram_class_weight", "fused_label_range", "fused_class_weight", "fused_weight_dtype",
        "fused_bias_dtype", "autograd_hgp_label_range", "autograd_hutchinson_label_range",
        "autograd_full_label_range", "hutchinson_class_weight", "full_weight", "fishr_offsets", "no_labels",
        "inner_method"])
def test_bad_arguments(call, message):
    """Every error names the penalty and the argument, whichever backend and form runs."""
    with pytest.raises(ValueError, match=f"^{message}"):
        call(*problem())
