"""Rows that put nearly all their mass on one class, as every row does late in training: their
loss, gradient and Hessian are of the size of the rest of the mass p̄ = 1 - p_k. Written through
1 - p_k, or through sums that subtract p_k-sized terms, they keep only eps/p̄ of their relative
precision (1-7% in float32 at p̄ ≈ 5e-6, as torch's own cross_entropy does); the ops take p̄ from the
row statistics and center on the dominant class instead (csrc/math/softmax.h, tile.h).
Reference: the same quantities at 60 significant digits (mpmath) from the inputs as the op sees
them, the gradients by central differences."""

import itertools

import pytest
import torch

import hessalign_ext
from hessalign_ext import probes
from hessalign_ext.penalties import hgp
from conftest import confident_head

mpmath = pytest.importorskip("mpmath")

NUM_PROBES, SEED = 3, 7


def _mp_outputs(z, w, b, vectors, labels, offsets, smoothing, class_weight, probe_signs, op):
    """Each domain's loss, gradient, Hessian diagonal, trace, HVP with `vectors` and Hutchinson
    estimates with `probe_signs` of the mean cross-entropy with torch's options (DESIGN.md §1),
    entry by entry at mpmath's precision. For the signed sums over rows, "<op>_size" sums the
    terms' magnitudes: the scale of the rounding of a sum that cancels. The products are formed only
    for the op that reads them."""
    N, C = len(z), len(w)
    zt = [list(row) + [mpmath.mpf(1)] for row in z]
    wt = [list(row) + [b[c]] for c, row in enumerate(w)]
    D = len(zt[0])
    cw = class_weight or [mpmath.mpf(1)] * C
    E = len(offsets) - 1
    zero = mpmath.mpf(0)
    block = lambda: [[[zero] * D for _ in range(C)] for _ in range(E)]
    out = {"loss": [zero] * E, "trace": [zero] * E, "grad": block(), "grad_size": block(), "diag": block(),
           "hvp": block(), "hvp_size": block(), "hutchinson_diag": block(), "hutchinson_diag_size": block(),
           "hutchinson_trace": [zero] * E}
    inv_k = mpmath.mpf(1) / len(probe_signs)
    for e in range(E):
        rows = range(offsets[e], offsets[e + 1])
        denom = mpmath.fsum(cw[labels[i]] for i in rows)
        for i in rows:
            logits = [mpmath.fsum(x * y for x, y in zip(zt[i], wt[c])) for c in range(C)]
            top = max(logits)
            ex = [mpmath.exp(v - top) for v in logits]
            lse = top + mpmath.log(mpmath.fsum(ex))
            p = [x / mpmath.fsum(ex) for x in ex]
            a = (1 - smoothing) * cw[labels[i]] / denom
            bi = smoothing / (C * denom)
            coef = a + bi * mpmath.fsum(cw)
            t = [(a if c == labels[i] else 0) + bi * cw[c] for c in range(C)]
            out["loss"][e] += mpmath.fsum(t[c] * (lse - logits[c]) for c in range(C))
            zz = mpmath.fsum(x * x for x in zt[i])
            out["trace"][e] += coef * mpmath.fsum(pc * (1 - pc) for pc in p) * zz

            def hess(v):  # the row's logit-space product c_i (diag p - p pᵀ) (V z̃_i)
                u = [mpmath.fsum(x * y for x, y in zip(v[c], zt[i])) for c in range(C)]
                mean = mpmath.fsum(pc * uc for pc, uc in zip(p, u))
                return [coef * p[c] * (u[c] - mean) for c in range(C)]

            s = hess(vectors[e]) if op == "hvp" else [zero] * C
            sk = [hess(v) for v in probe_signs] if op.startswith("hutchinson") else []
            for c in range(C):
                r, q = coef * p[c] - t[c], coef * p[c] * (1 - p[c])
                for j in range(D):
                    out["grad"][e][c][j] += r * zt[i][j]
                    out["grad_size"][e][c][j] += abs(r * zt[i][j])
                    out["diag"][e][c][j] += q * zt[i][j] ** 2
                    out["hvp"][e][c][j] += s[c] * zt[i][j]
                    out["hvp_size"][e][c][j] += abs(s[c] * zt[i][j])
                    for v, sv in zip(probe_signs, sk):
                        term = inv_k * v[c][j] * sv[c] * zt[i][j]
                        out["hutchinson_diag"][e][c][j] += term
                        out["hutchinson_diag_size"][e][c][j] += abs(term)
                        out["hutchinson_trace"][e] += term
    return out


def _flat(v):
    return [x for item in v for x in _flat(item)] if isinstance(v, list) else [v]


CALLS = {
    "loss": lambda z, w, b, v, y, off, opts: hessalign_ext.domain_losses(z, w, b, y, off, **opts),
    "grad": lambda z, w, b, v, y, off, opts: hessalign_ext.head_grad(z, w, b, y, off, **opts),
    "diag": lambda z, w, b, v, y, off, opts: hessalign_ext.head_hessian_diag(z, w, b, off, labels=y, **opts),
    "trace": lambda z, w, b, v, y, off, opts: hessalign_ext.head_hessian_trace(z, w, b, off, labels=y, **opts),
    "hvp": lambda z, w, b, v, y, off, opts: hessalign_ext.head_hvp(z, w, b, v, off, labels=y, **opts),
    "hutchinson_diag": lambda z, w, b, v, y, off, opts: hessalign_ext.hutchinson_diag(
        z, w, b, off, NUM_PROBES, SEED, labels=y, **opts),
    "hutchinson_trace": lambda z, w, b, v, y, off, opts: hessalign_ext.hutchinson_trace(
        z, w, b, off, NUM_PROBES, SEED, labels=y, **opts),
}


@pytest.mark.parametrize("options", ["plain", "smoothed_weighted"])
@pytest.mark.parametrize("class_tile", [None, 2], ids=["one_tile", "tiles_of_2"])
@pytest.mark.parametrize("dtype, margin", [(torch.float32, 14.0), (torch.float64, 30.0)], ids=["f32", "f64"])
@pytest.mark.parametrize("op", list(CALLS))
def test_confident_rows_keep_their_precision(op, dtype, margin, class_tile, options, monkeypatch):
    """Every row's label is its confident class, `margin` nats above the others (p̄ ≈ 2-5e-6 in
    float32, 2-5e-13 in float64): the op's values and its gradients into features, weight, bias
    (and vectors) to the dtype's relative precision. Before, float32 was 1-120% off, float64 up to
    67% in the gradients."""
    monkeypatch.setattr(mpmath.mp, "dps", 60)  # restored after the test
    offsets = [0, 3, 5]
    d, C = 6, 5
    labels = torch.tensor([0, 2, 0, 4, 2])
    # every input rounded to the op's dtype, and the reference computed from the rounded values
    z, w, b, g = confident_head(labels, margin, d, C, seed=11)
    vectors = torch.randn(len(offsets) - 1, C, d + 1, generator=g, dtype=torch.float64)
    z, w, b, vectors = (t.to(dtype) for t in (z, w, b, vectors))
    smoothing, class_weight = (0.0, None) if options == "plain" else (0.05, torch.rand(C, generator=g) + 0.5)
    opts = {"label_smoothing": smoothing, "class_tile": class_tile}
    if class_weight is not None:
        opts["class_weight"] = class_weight.to(dtype)
        class_weight = class_weight.to(dtype)
    mp = lambda t: [mp(row) for row in t] if t.dim() > 1 else [mpmath.mpf(v) for v in t.double().tolist()]
    args = [mp(z), mp(w), mp(b), mp(vectors)]
    mp_cw = mp(class_weight) if class_weight is not None else None
    signs = mp(probes.rademacher_probes(SEED, NUM_PROBES, C, d + 1))
    outputs = lambda a: _mp_outputs(*a, labels.tolist(), offsets, mpmath.mpf(smoothing), mp_cw, signs, op)

    exact = outputs(args)
    expected = torch.tensor([float(v) for v in _flat(exact[op])], dtype=torch.float64)
    size = exact.get(op + "_size")
    size = torch.tensor([float(v) for v in _flat(size)]) if size else expected.abs()
    inputs = [t.clone().requires_grad_() for t in (z, w, b, vectors)]
    got = CALLS[op](*inputs, labels, torch.tensor(offsets), opts)
    rtol = 2e-5 if dtype == torch.float32 else 1e-11
    error = (got.double().flatten() - expected).abs() / size
    assert error.max() <= rtol, f"forward: relative error {error.max():.3g} (up to {rtol} allowed)"

    upstream = torch.randn(got.shape, generator=g, dtype=torch.float64)
    U = [mpmath.mpf(v) for v in upstream.flatten().tolist()]
    (got * upstream.to(dtype)).sum().backward()
    h = mpmath.mpf(10) ** -20

    def functional(arg, idx, delta):
        shifted = [[[list(r) for r in x] if isinstance(x[0], list) else list(x) for x in a]
                   if isinstance(a[0], list) else list(a) for a in args]
        row = shifted[arg]
        for i in idx[:-1]:
            row = row[i]
        row[idx[-1]] += delta
        return mpmath.fsum(u * v for u, v in zip(U, _flat(outputs(shifted)[op])))

    names = ["features", "weight", "bias"] + (["vectors"] if op == "hvp" else [])
    for arg, name in enumerate(names):
        t = inputs[arg]
        ref = torch.zeros(t.shape, dtype=torch.float64)
        for idx in itertools.product(*(range(s) for s in t.shape)):
            ref[idx] = float((functional(arg, idx, h) - functional(arg, idx, -h)) / (2 * h))
        torch.testing.assert_close(t.grad.double(), ref, rtol=rtol * 10, atol=rtol * 10 * ref.abs().max().item(),
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "class_weight_mean_of_domains"])
@pytest.mark.parametrize("method", ["ops", "gram", "fused"])
def test_hgp_step_at_confident_rows(method, weighted):
    """Every form of the HGP step keeps float32's precision at confident rows (p̄ ≈ 2e-6): penalty
    and gradients against the float64 ops form. The ops form through head_grad and head_hvp (held
    above to 60 digits), the Gram form by float64 inside, the fused form (hgp_fused, probabilities
    in float32) by p̄ = Σ' p (csrc/math/hgp_fused.h); before that it was 0.6% off in the penalty
    and 2-3% in the gradients here. Class weights keep the label's c − t at zero, as plain rows do
    (label smoothing would hide the cancellation)."""
    g = torch.Generator().manual_seed(3)
    E, n, d, C = 3, 8, 600, 5  # D ≥ 512: a head where the Gram form is a candidate
    labels = torch.randint(0, C, (E * n,), generator=g)
    z = torch.randn(E * n, d, generator=g, dtype=torch.float64)
    b = torch.randn(C, generator=g, dtype=torch.float64)
    logits = 14.0 * torch.nn.functional.one_hot(labels, C).double() + torch.rand(E * n, C, generator=g,
                                                                                  dtype=torch.float64)
    w = torch.linalg.lstsq(z, logits - b).solution.T
    head32 = [t.float().contiguous() for t in (z, w, b)]
    offsets = torch.arange(0, E * n + 1, n)
    class_weight = torch.rand(C, generator=g) + 0.5

    def step(form, dtype):
        args = [t.to(dtype).requires_grad_() for t in head32]
        options = dict(mean_target="mean_of_domains", class_weight=class_weight.to(dtype)) if weighted else {}
        penalty = hgp(*args, labels, offsets, method=form, **options)
        return [penalty.double()] + [x.double() for x in torch.autograd.grad(penalty, args)]

    for got, ref, name in zip(step(method, torch.float32), step("ops", torch.float64),
                              ["penalty", "features", "weight", "bias"]):
        error = ((got - ref).abs().max() / ref.abs().max()).item()
        assert error < 2e-5, f"{method} {name}: relative error {error:.3g}"


@pytest.mark.parametrize("step", ["hutchinson_exact", "hutchinson_probes", "full"])
def test_penalty_steps_at_confident_rows(step):
    """The other penalty steps at confident rows (p̄ ≈ 4e-6, float32): penalty and gradients within
    2e-5 of the float64 step, through the ops held above (the Hutchinson steps: head_hessian_diag
    and hutchinson_diag; whole-Hessian alignment: head_hessian_inner)."""
    from hessalign_ext import penalties

    call = {"hutchinson_exact": lambda *a: penalties.hutchinson(*a, num_probes=None),
            "hutchinson_probes": lambda *a: penalties.hutchinson(*a, num_probes=4),
            "full": penalties.hessian_alignment_full}[step]
    C, d = 5, 600
    classes = torch.randint(0, C, (24,), generator=torch.Generator().manual_seed(3))
    z, w, b, _ = confident_head(classes, 14.0, d, C, seed=3)

    def run(dtype):
        args = [t.float().to(dtype).requires_grad_() for t in (z, w, b)]
        penalty = call(*args, classes, torch.tensor([0, 8, 16, 24]))
        return [penalty.double()] + [x.double() for x in torch.autograd.grad(penalty, args)]

    for got, ref, name in zip(run(torch.float32), run(torch.float64), ["penalty", "features", "weight", "bias"]):
        error = ((got - ref).abs().max() / ref.abs().max()).item()
        assert error < 2e-5, f"{step} {name}: relative error {error:.3g}"


def test_fishr_at_confident_rows():
    """Fishr's per-domain variances (penalties.gradient_variance) at confident rows (p̄ ≈ 6e-6,
    float32), value and gradients, against float64: its residuals and their softmax backward are
    centered on the dominant class (penalties/common.py, softmax_residuals), where c p − t and
    torch's softmax backward were 1.4-1.7% off."""
    from hessalign_ext.penalties import gradient_variance

    C, d = 7, 40
    classes = torch.randint(0, C, (24,), generator=torch.Generator().manual_seed(2))
    z, w, b, _ = confident_head(classes, 14.0, d, C, seed=2)
    offsets = torch.tensor([0, 8, 16, 24])
    upstream = torch.randn(3, C, d + 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def run(dtype):
        args = [t.float().to(dtype).requires_grad_() for t in (z, w, b)]
        var = gradient_variance(*args, classes, offsets)
        return [var.double()] + [x.double() for x in torch.autograd.grad((var * upstream.to(dtype)).sum(), args)]

    for got, ref, name in zip(run(torch.float32), run(torch.float64), ["variance", "features", "weight", "bias"]):
        error = ((got - ref).abs().max() / ref.abs().max()).item()
        assert error < 2e-5, f"{name}: relative error {error:.3g}"


def test_softmax_residuals_gradcheck():
    """softmax_residuals' hand-written backward (logits, c and t) against finite differences, on
    rows with and without a dominant class."""
    from hessalign_ext.penalties.common import softmax_residuals

    g = torch.Generator().manual_seed(4)
    N, C = 6, 5
    logits = torch.randn(N, C, generator=g, dtype=torch.float64)
    logits[::2] += 9.0 * torch.nn.functional.one_hot(torch.randint(0, C, (3,), generator=g), C)
    c = torch.rand(N, generator=g, dtype=torch.float64) + 0.5
    t = torch.rand(N, C, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(softmax_residuals, [x.requires_grad_() for x in (logits, c, t)])
