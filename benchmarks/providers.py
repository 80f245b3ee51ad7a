"""What the benchmarks time: every op and penalty step, by every provider a user could pick.

A *case* is an op (or a penalty step) with its probe count K where it has one; a *shape* is a
head (E domains of n rows, d features, C classes, with a bias). For a case, each provider
builds a zero-argument callable on a :class:`Problem` (``build(problem, case) -> run``) that
returns the op's output in the op's layout ((E, C, D) parameter blocks with the bias as last
column, (E,) or (E, E)), so every provider can be checked against the float64 truth of
``hessalign_ext.reference`` before it is timed. Set-up a user would do once (modules, BackPACK's
``extend``, detached leaf copies) happens in ``build``; everything a training step repeats
happens in ``run``.

Providers (``PROVIDERS``):

- ``ours``: the fused op of ``hessalign_ext.ops`` (all domains in one call).
- ``autograd``: double backward through an explicit ``F.linear`` head and ``F.cross_entropy``,
  one domain at a time, as the paper's reference code does it: HVP as ``∇(g·v)``; Hutchinson
  one probe at a time (one double backward per probe and domain); the exact diagonal as ``C·D``
  one-hot HVPs batched with ``is_grads_batched`` (only for ``C·D <= AUTOGRAD_EXACT_MAX``); the
  Hessian inner products from explicit Hessians, contracted in float64 (in float32 the sums of
  (C·D)² products are off by ~3e-3 relative).
- ``torch_func``: ``torch.func``: ``grad``, HVP as ``jvp`` of ``grad``, Hutchinson as ``vmap``
  of that HVP over the probes (chunked), the exact diagonal as ``vmap`` over one-hot vectors.
- ``closed_form``: the formulas of DESIGN.md §1 as plain torch expressions, with a Python loop
  over domains (and probe chunks): what one writes without the extension.
- ``backpack``: BackPACK's ``DiagHessian`` (exact diagonal; the trace as its sum).
- ``curvlinops``: ``HessianLinearOperator`` (HVP) and its ``hutchinson_diag``/``hutchinson_trace``
  estimators (called on chunks of probes and averaged: it vmaps all probes at once).
- Penalty steps (``hgp_step``, ``hutchinson_step`` with K probes, ``hutchinson_exact_step``):
  ``kernel`` and ``autograd``, the two backends of ``hessalign_ext.penalties``; a step is the
  penalty's forward plus its backward into features, weight and bias. For HGP also
  ``kernel_gram``, ``kernel_fused`` and ``kernel_ops``, the kernel backend's three exact forms
  (``kernel`` is ``method="auto"``, which picks gram or fused).

Probes: ``ours`` draws counter-based probes inside the op. The other Hutchinson providers draw
Rademacher probes with ``torch.randint`` inside ``run`` (as the paper's code does), one set per
probe shared by all domains like the op; for the reference check they are given the op's own
probes instead (``hessalign_ext.probes``), so every estimate is compared exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import warnings
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import autograd

import hessalign_ext.ops as ops
from hessalign_ext import penalties
from hessalign_ext import probes as hprobes
from hessalign_ext import reference
from hessalign_ext.penalties import autograd_reference

OPS = ["domain_losses", "head_grad", "head_hvp", "head_hessian_diag", "head_hessian_trace",
       "head_hessian_inner", "hutchinson_diag", "hutchinson_trace"]
PENALTY_STEPS = ["hgp_step", "hutchinson_step", "hutchinson_exact_step"]
PROBE_CASES = ("hutchinson_diag", "hutchinson_trace", "hutchinson_step")

# Exact diagonal / trace / full Hessians by one-hot HVPs: only for heads this small.
AUTOGRAD_EXACT_MAX = 16384     # C·D, one-hot HVPs for diag/trace (autograd, torch_func)
FULL_HESSIAN_MAX = 4200         # C·D, explicit Hessians for head_hessian_inner
AUTOGRAD_PENALTY_EXACT_MAX = 1100  # C·D, penalties.hutchinson(num_probes=None, backend="autograd")
BACKPACK_MAX = 2 ** 26          # n·C² elements of BackPACK's CE square-root Hessian per domain
ONE_HOT_CHUNK = 512             # one-hot vectors per batched HVP
PROBE_CHUNK_ELEMS = 2 ** 23     # probes held at once: B·C·D <= this (B >= 1)

# Penalty weights: the penalties' defaults, spelled out so the truth uses the same.
HGP_ALPHA, HGP_BETA = 1e-4, 5e-3
HUTCH_ALPHA, HUTCH_BETA = 1e-3, 5e-3


# ----------------------------------------------------------------------------- problems


@dataclasses.dataclass(frozen=True)
class Shape:
    """A head: E domains of n rows each, d features, C classes, with a bias."""

    E: int
    n: int
    d: int
    C: int
    tag: str = ""  # "domainbed", "large", "scaling-C", ... (grouping only)

    @property
    def N(self) -> int:
        return self.E * self.n

    @property
    def D(self) -> int:
        return self.d + 1

    @property
    def id(self) -> str:
        return f"E{self.E}xn{self.n}_d{self.d}_C{self.C}"

    @classmethod
    def from_id(cls, shape_id: str, tag: str = "") -> "Shape":
        """The head an id names (the inverse of ``id``)."""
        m = re.fullmatch(r"E(\d+)xn(\d+)_d(\d+)_C(\d+)", shape_id)
        if m is None:
            raise ValueError(f"shape id {shape_id!r} is not of the form E3xn32_d512_C65")
        return cls(*map(int, m.groups()), tag)

    def reduced(self) -> "Shape":
        """The same domains with a small head: where the float64 reference cannot afford the real one."""
        return Shape(self.E, min(self.n, 32), min(self.d, 48), min(self.C, 12), "check")


@dataclasses.dataclass(frozen=True)
class Case:
    """An op or penalty step; K probes for the Hutchinson ones."""

    op: str
    K: Optional[int] = None

    @property
    def label(self) -> str:
        return self.op if self.K is None else f"{self.op}[K={self.K}]"

    @property
    def is_step(self) -> bool:
        return self.op in PENALTY_STEPS


@dataclasses.dataclass
class Problem:
    shape: Shape
    device: torch.device
    dtype: torch.dtype
    features: torch.Tensor  # (N, d)
    weight: torch.Tensor  # (C, d)
    bias: torch.Tensor  # (C,)
    labels: torch.Tensor  # (N,) int64
    offsets: torch.Tensor  # (E+1,) int64, CPU
    vectors: torch.Tensor  # (E, C, D)
    seed: int = 1234

    @property
    def spans(self):
        o = self.offsets.tolist()
        return list(zip(o[:-1], o[1:]))

    def head(self):
        return self.features, self.weight, self.bias


def make_problem(shape: Shape, device="cpu", dtype=torch.float32, seed: int = 0) -> Problem:
    """Post-ReLU features (like a ResNet's pooled features), a head with O(1) logits, random labels."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(shape.N, shape.d, generator=g).relu_()
    w = torch.randn(shape.C, shape.d, generator=g) * (1.5 / math.sqrt(shape.d))
    b = torch.randn(shape.C, generator=g) * 0.1
    y = torch.randint(0, shape.C, (shape.N,), generator=g)
    v = torch.randn(shape.E, shape.C, shape.D, generator=g)
    offsets = torch.arange(0, shape.N + 1, shape.n, dtype=torch.int64)
    dev = torch.device(device)
    cast = dict(device=dev, dtype=dtype)
    return Problem(shape, dev, dtype, z.to(**cast), w.to(**cast), b.to(**cast), y.to(dev), offsets, v.to(**cast))


def _split(block: torch.Tensor, d: int):
    """(…, C, D) block -> (…, C, d) weight part, (…, C) bias part."""
    return block[..., :d], block[..., d]


def _join(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cat([w, b.unsqueeze(-1)], dim=-1)


def _augment(z: torch.Tensor) -> torch.Tensor:
    return torch.cat([z, z.new_ones(z.shape[0], 1)], dim=1)


def _probe_chunk(shape: Shape) -> int:
    return max(1, PROBE_CHUNK_ELEMS // (shape.C * shape.D))


def _draw(B: int, C: int, D: int, like: torch.Tensor) -> torch.Tensor:
    """B Rademacher probes (B, C, D), drawn the usual way (torch.randint)."""
    return torch.randint(0, 2, (B, C, D), device=like.device, dtype=like.dtype).mul_(2).sub_(1)


class ProbeSource:
    """Probes k0 .. k0+B-1 as (B, C, D): drawn fresh (timing) or the op's own probes (checking)."""

    def __init__(self, problem: Problem, K: int, exact: Optional[torch.Tensor] = None):
        self.p, self.K, self.exact = problem, K, exact

    def __call__(self, k0: int, B: int) -> torch.Tensor:
        if self.exact is not None:
            return self.exact[k0:k0 + B]
        s = self.p.shape
        return _draw(B, s.C, s.D, self.p.features)

    def chunks(self):
        B = _probe_chunk(self.p.shape)
        for k0 in range(0, self.K, B):
            yield k0, min(B, self.K - k0)


def op_probes(problem: Problem, K: int, seed: Optional[int] = None) -> torch.Tensor:
    """The probes the op draws for ``seed``: (K, C, D) in the problem's dtype and device."""
    s = problem.shape
    pr = hprobes.rademacher_probes(problem.seed if seed is None else seed, K, s.C, s.D)
    return pr.to(problem.device, problem.dtype)


# ------------------------------------------------------------------------ providers


@dataclasses.dataclass
class Provider:
    name: str
    build: Callable  # (problem, case, probes=None) -> run
    not_applicable: Callable = lambda problem, case: None  # -> reason or None
    uses_probes: bool = False  # build takes the op's probes for the reference check


def _ours(problem: Problem, case: Case, probes=None):
    p = problem
    Z, W, b = p.head()
    if case.op == "domain_losses":
        return lambda: ops.domain_losses(Z, W, b, p.labels, p.offsets)
    if case.op == "head_grad":
        return lambda: ops.head_grad(Z, W, b, p.labels, p.offsets)
    if case.op == "head_hvp":
        return lambda: ops.head_hvp(Z, W, b, p.vectors, p.offsets)
    if case.op == "head_hessian_diag":
        return lambda: ops.head_hessian_diag(Z, W, b, p.offsets)
    if case.op == "head_hessian_trace":
        return lambda: ops.head_hessian_trace(Z, W, b, p.offsets)
    if case.op == "head_hessian_inner":
        return lambda: ops.head_hessian_inner(Z, W, b, p.offsets)
    if case.op == "hutchinson_diag":
        return lambda: ops.hutchinson_diag(Z, W, b, p.offsets, case.K, p.seed)
    if case.op == "hutchinson_trace":
        return lambda: ops.hutchinson_trace(Z, W, b, p.offsets, case.K, p.seed)
    raise KeyError(case.op)


# --- closed form: DESIGN.md §1 in plain torch, a Python loop over domains ---------------


def _cf_domain(p: Problem):
    """Per domain: (augmented rows Z̃_e, probabilities P_e, n_e)."""
    Zt = _augment(p.features)
    for s, t in p.spans:
        P = F.linear(p.features[s:t], p.weight, p.bias).softmax(dim=1)
        yield Zt[s:t], P, t - s


def _cf_grad(p: Problem):
    Zt = _augment(p.features)
    out = []
    for s, t in p.spans:
        R = F.linear(p.features[s:t], p.weight, p.bias).softmax(dim=1)
        R[torch.arange(t - s, device=R.device), p.labels[s:t]] -= 1
        out.append(R.T @ Zt[s:t] / (t - s))
    return torch.stack(out)


def _cf_hvp(p: Problem):
    out = []
    for e, (z, P, n) in enumerate(_cf_domain(p)):
        U = z @ p.vectors[e].T
        S = P * (U - (P * U).sum(1, keepdim=True))
        out.append(S.T @ z / n)
    return torch.stack(out)


def _cf_diag(p: Problem):
    return torch.stack([(P * (1 - P)).T @ (z * z) / n for z, P, n in _cf_domain(p)])


def _cf_trace(p: Problem):
    return torch.stack([((P * (1 - P)).sum(1) * (z * z).sum(1)).sum() / n for z, P, n in _cf_domain(p)])


def _cf_inner(p: Problem):
    doms = list(_cf_domain(p))
    G = torch.empty(len(doms), len(doms), dtype=p.dtype, device=p.device)
    for a, (za, Pa, na) in enumerate(doms):
        for b, (zb, Pb, nb) in enumerate(doms):
            S = Pa @ Pb.T
            T = S - Pa @ (Pb * Pb).T - (Pa * Pa) @ Pb.T + S * S
            G[a, b] = (T * (za @ zb.T).pow(2)).sum() / (na * nb)
    return G


def _cf_hutchinson(p: Problem, src: ProbeSource, diag: bool):
    s = p.shape
    doms = list(_cf_domain(p))
    acc = [torch.zeros(s.C, s.D, dtype=p.dtype, device=p.device) if diag else 0.0 for _ in doms]
    for k0, B in src.chunks():
        V = src(k0, B)  # (B, C, D), shared by all domains
        Vf = V.reshape(B * s.C, s.D)
        for e, (z, P, n) in enumerate(doms):
            U = (z @ Vf.T).view(-1, B, s.C)  # u_ibc = v_bc · z̃_i
            Pb = P.unsqueeze(1)
            if diag:
                S = Pb * (U - (Pb * U).sum(-1, keepdim=True))
                O = (S.reshape(-1, B * s.C).T @ z).view(B, s.C, s.D)  # n_e · H_e v_b
                acc[e] = acc[e] + (V * O).sum(0) / n
            else:
                m = (Pb * U).sum(-1)
                acc[e] = acc[e] + ((Pb * U * U).sum(-1) - m * m).sum() / n
    return torch.stack([a / src.K for a in acc]) if diag else torch.stack(acc) / src.K


def _closed_form(problem: Problem, case: Case, probes=None):
    p = problem
    if case.op == "domain_losses":
        return lambda: torch.stack([F.cross_entropy(F.linear(p.features[s:t], p.weight, p.bias), p.labels[s:t])
                                    for s, t in p.spans])
    simple = {"head_grad": _cf_grad, "head_hvp": _cf_hvp, "head_hessian_diag": _cf_diag,
              "head_hessian_trace": _cf_trace, "head_hessian_inner": _cf_inner}
    if case.op in simple:
        fn = simple[case.op]
        return lambda: fn(p)
    if case.op in ("hutchinson_diag", "hutchinson_trace"):
        src = ProbeSource(p, case.K, probes)
        diag = case.op == "hutchinson_diag"
        return lambda: _cf_hutchinson(p, src, diag)
    raise KeyError(case.op)


# --- autograd: double backward through F.linear, per domain (the paper's way) -------------


def _leaf_params(p: Problem):
    W = p.weight.detach().clone().requires_grad_(True)
    b = p.bias.detach().clone().requires_grad_(True)
    return W, b


def _ag_grads(p: Problem, W, b, create_graph: bool):
    for s, t in p.spans:
        loss = F.cross_entropy(F.linear(p.features[s:t], W, b), p.labels[s:t])
        yield autograd.grad(loss, (W, b), create_graph=create_graph)


def _ag_hvp(gW, gb, W, b, vW, vb, retain: bool):
    hW, hb = autograd.grad((gW * vW).sum() + (gb * vb).sum(), (W, b), retain_graph=retain)
    return _join(hW, hb)


def _ag_exact_diag(p: Problem, W, b):
    s = p.shape
    n = s.C * s.D
    out = []
    for gW, gb in _ag_grads(p, W, b, True):
        flat = _join(gW, gb).reshape(-1)
        parts = []
        for j0 in range(0, n, ONE_HOT_CHUNK):
            j1 = min(n, j0 + ONE_HOT_CHUNK)
            idx = torch.arange(j0, j1, device=p.device)
            basis = torch.zeros(j1 - j0, n, dtype=p.dtype, device=p.device)
            basis[torch.arange(j1 - j0, device=p.device), idx] = 1
            hW, hb = autograd.grad(flat, (W, b), basis, retain_graph=True, is_grads_batched=True)
            parts.append(_join(hW, hb).reshape(j1 - j0, n).gather(1, idx[:, None]).squeeze(1))
        out.append(torch.cat(parts).view(s.C, s.D))
    return torch.stack(out)


def _ag_full_hessians(p: Problem, W, b):
    s = p.shape
    n = s.C * s.D
    eye = torch.eye(n, dtype=p.dtype, device=p.device)
    out = []
    for gW, gb in _ag_grads(p, W, b, True):
        flat = _join(gW, gb).reshape(-1)
        rows = [_join(*autograd.grad(flat, (W, b), eye[j0:j0 + ONE_HOT_CHUNK], retain_graph=True,
                                     is_grads_batched=True)).reshape(-1, n)
                for j0 in range(0, n, ONE_HOT_CHUNK)]
        out.append(torch.cat(rows))
    return torch.stack(out)


def _ag_hutchinson(p: Problem, W, b, src: ProbeSource, diag: bool):
    s = p.shape
    grads = list(_ag_grads(p, W, b, True))
    acc = [torch.zeros(s.C, s.D, dtype=p.dtype, device=p.device) if diag else 0.0 for _ in grads]
    for k0, B in src.chunks():
        V = src(k0, B)
        for k in range(B):  # one double backward per probe and domain, as the reference code
            v = V[k]
            vW, vb = _split(v, s.d)
            for e, (gW, gb) in enumerate(grads):
                hv = _ag_hvp(gW, gb, W, b, vW, vb, retain=True)
                acc[e] = acc[e] + (v * hv if diag else (v * hv).sum())
    return torch.stack(acc) / src.K


def _autograd(problem: Problem, case: Case, probes=None):
    p = problem
    W, b = _leaf_params(p)
    d = p.shape.d
    if case.op == "head_grad":
        return lambda: torch.stack([_join(*g) for g in _ag_grads(p, W, b, False)])
    if case.op == "head_hvp":
        def run():
            return torch.stack([_ag_hvp(gW, gb, W, b, *_split(p.vectors[e], d), retain=False)
                                for e, (gW, gb) in enumerate(_ag_grads(p, W, b, True))])
        return run
    if case.op == "head_hessian_diag":
        return lambda: _ag_exact_diag(p, W, b)
    if case.op == "head_hessian_trace":
        return lambda: _ag_exact_diag(p, W, b).sum((1, 2))
    if case.op == "head_hessian_inner":
        def run():
            H = _ag_full_hessians(p, W, b).flatten(1).double()  # float32 sums of (C·D)² terms lose ~3e-3
            return (H @ H.T).to(p.dtype)
        return run
    if case.op in ("hutchinson_diag", "hutchinson_trace"):
        src = ProbeSource(p, case.K, probes)
        diag = case.op == "hutchinson_diag"
        return lambda: _ag_hutchinson(p, W, b, src, diag)
    raise KeyError(case.op)


def _na_exact(limit: int, what: str):
    def na(problem: Problem, case: Case):
        cd = problem.shape.C * problem.shape.D
        if case.op in ("head_hessian_diag", "head_hessian_trace") and cd > AUTOGRAD_EXACT_MAX:
            return f"{what}: exact diagonal needs C·D = {cd} one-hot HVPs per domain (> {AUTOGRAD_EXACT_MAX})"
        if case.op == "head_hessian_inner" and cd > FULL_HESSIAN_MAX:
            return f"{what}: explicit Hessians of C·D = {cd} (> {FULL_HESSIAN_MAX})"
        if case.op == "domain_losses":
            return f"{what}: a forward loss, nothing to differentiate (closed_form is the same code)"
        return None
    return na


# --- torch.func: grad, jvp of grad, vmap ------------------------------------------------


def _tf_loss(W, b, z, y):
    return F.cross_entropy(F.linear(z, W, b), y)


def _tf_hvp_fn(z, y):
    g = torch.func.grad(_tf_loss, argnums=(0, 1))

    def hvp(W, b, vW, vb):
        return torch.func.jvp(lambda W_, b_: g(W_, b_, z, y), (W, b), (vW, vb))[1]
    return hvp


def _tf_exact_diag(p: Problem):
    s = p.shape
    n = s.C * s.D
    W, b = p.weight, p.bias
    out = []
    for lo, hi in p.spans:
        hvp = _tf_hvp_fn(p.features[lo:hi], p.labels[lo:hi])
        batched = torch.func.vmap(hvp, in_dims=(None, None, 0, 0))
        parts = []
        for j0 in range(0, n, ONE_HOT_CHUNK):
            j1 = min(n, j0 + ONE_HOT_CHUNK)
            idx = torch.arange(j0, j1, device=p.device)
            basis = torch.zeros(j1 - j0, n, dtype=p.dtype, device=p.device)
            basis[torch.arange(j1 - j0, device=p.device), idx] = 1
            hW, hb = batched(W, b, *_split(basis.view(-1, s.C, s.D), s.d))
            parts.append(_join(hW, hb).reshape(j1 - j0, n).gather(1, idx[:, None]).squeeze(1))
        out.append(torch.cat(parts).view(s.C, s.D))
    return torch.stack(out)


def _tf_hutchinson(p: Problem, src: ProbeSource, diag: bool):
    s = p.shape
    fns = [torch.func.vmap(_tf_hvp_fn(p.features[lo:hi], p.labels[lo:hi]), in_dims=(None, None, 0, 0))
           for lo, hi in p.spans]
    acc = [torch.zeros(s.C, s.D, dtype=p.dtype, device=p.device) if diag else 0.0 for _ in fns]
    for k0, B in src.chunks():
        V = src(k0, B)
        vW, vb = _split(V, s.d)
        for e, fn in enumerate(fns):
            hv = _join(*fn(p.weight, p.bias, vW, vb))
            acc[e] = acc[e] + ((V * hv).sum(0) if diag else (V * hv).sum())
    return torch.stack(acc) / src.K


def _torch_func(problem: Problem, case: Case, probes=None):
    p = problem
    d = p.shape.d
    if case.op == "head_grad":
        g = torch.func.grad(_tf_loss, argnums=(0, 1))
        return lambda: torch.stack([_join(*g(p.weight, p.bias, p.features[s:t], p.labels[s:t])) for s, t in p.spans])
    if case.op == "head_hvp":
        def run():
            return torch.stack([_join(*_tf_hvp_fn(p.features[s:t], p.labels[s:t])(p.weight, p.bias,
                                                                                  *_split(p.vectors[e], d)))
                                for e, (s, t) in enumerate(p.spans)])
        return run
    if case.op == "head_hessian_diag":
        return lambda: _tf_exact_diag(p)
    if case.op == "head_hessian_trace":
        return lambda: _tf_exact_diag(p).sum((1, 2))
    if case.op == "head_hessian_inner":
        def run():
            hs = []
            for s, t in p.spans:
                theta = _join(p.weight, p.bias)
                f = lambda th: F.cross_entropy(_augment(p.features[s:t]) @ th.T, p.labels[s:t])  # noqa: E731
                hs.append(torch.func.hessian(f)(theta).reshape(theta.numel(), -1))
            H = torch.stack(hs).flatten(1).double()  # float32 sums of (C·D)² terms lose ~3e-3
            return (H @ H.T).to(p.dtype)
        return run
    if case.op in ("hutchinson_diag", "hutchinson_trace"):
        src = ProbeSource(p, case.K, probes)
        diag = case.op == "hutchinson_diag"
        return lambda: _tf_hutchinson(p, src, diag)
    raise KeyError(case.op)


# --- BackPACK -------------------------------------------------------------------------------


def _linear_module(p: Problem):
    lin = torch.nn.Linear(p.shape.d, p.shape.C).to(p.device, p.dtype)
    with torch.no_grad():
        lin.weight.copy_(p.weight)
        lin.bias.copy_(p.bias)
    return lin


def _backpack(problem: Problem, case: Case, probes=None):
    import backpack
    from backpack.extensions import DiagHessian

    p = problem
    model = backpack.extend(_linear_module(p))
    loss_fn = backpack.extend(torch.nn.CrossEntropyLoss())

    def diag():
        out = []
        for s, t in p.spans:
            loss = loss_fn(model(p.features[s:t]), p.labels[s:t])
            with backpack.backpack(DiagHessian()):
                loss.backward()
            out.append(_join(model.weight.diag_h, model.bias.diag_h))
        return torch.stack(out)

    if case.op == "head_hessian_diag":
        return diag
    if case.op == "head_hessian_trace":
        return lambda: diag().sum((1, 2))
    raise KeyError(case.op)


def _na_backpack(problem: Problem, case: Case):
    if case.op not in ("head_hessian_diag", "head_hessian_trace"):
        return "BackPACK: no such quantity (DiagHessian gives the exact diagonal only)"
    if problem.dtype not in (torch.float32, torch.float64):
        return "BackPACK: float32/float64 only"
    s = problem.shape
    if s.n * s.C * s.C > BACKPACK_MAX:
        return f"BackPACK: its CE square-root Hessian holds n·C² = {s.n * s.C * s.C} elements per domain"
    return None


# --- curvlinops -------------------------------------------------------------------------------


@contextlib.contextmanager
def _curvlinops_probes(vectors: Optional[List[torch.Tensor]]):
    """During a check: curvlinops' random_vector yields the op's probes, in order."""
    if vectors is None:
        yield
        return
    import curvlinops.diagonal.hutchinson as hd
    import curvlinops.trace.hutchinson as ht

    it = iter(vectors)
    saved = hd.random_vector, ht.random_vector
    hd.random_vector = ht.random_vector = lambda *a, **k: next(it)
    try:
        yield
    finally:
        hd.random_vector, ht.random_vector = saved


def _curvlinops(problem: Problem, case: Case, probes=None):
    import curvlinops

    p = problem
    s = p.shape
    model = _linear_module(p)
    params = list(model.parameters())
    loss_fn = torch.nn.CrossEntropyLoss()

    def operator(lo, hi):
        return curvlinops.HessianLinearOperator(model, loss_fn, params, [(p.features[lo:hi], p.labels[lo:hi])],
                                                check_deterministic=False)

    if case.op == "head_hvp":
        def run():
            return torch.stack([_join(*operator(lo, hi) @ list(_split(p.vectors[e], s.d)))
                                for e, (lo, hi) in enumerate(p.spans)])
        return run
    if case.op in ("hutchinson_diag", "hutchinson_trace"):
        diag = case.op == "hutchinson_diag"
        est = curvlinops.hutchinson_diag if diag else curvlinops.hutchinson_trace
        B = _probe_chunk(s)
        flat = None
        if probes is not None:  # curvlinops' flat layout: [W.flatten(), b]
            flat = [torch.cat([v[:, :s.d].reshape(-1), v[:, s.d]]) for v in probes]

        def run():
            out = []
            for lo, hi in p.spans:
                H = operator(lo, hi)
                acc = 0.0
                for k0 in range(0, case.K, B):
                    kb = min(B, case.K - k0)
                    with _curvlinops_probes(None if flat is None else flat[k0:k0 + kb]):
                        acc = acc + est(H, kb) * kb
                acc = acc / case.K
                out.append(_join(acc[:s.C * s.d].view(s.C, s.d), acc[s.C * s.d:]) if diag else acc)
            return torch.stack(out)
        return run
    raise KeyError(case.op)


def _na_curvlinops(problem: Problem, case: Case):
    if case.op not in ("head_hvp", "hutchinson_diag", "hutchinson_trace"):
        return "curvlinops: no closed form for this (only HVPs and estimators built on them)"
    if problem.dtype not in (torch.float32, torch.float64):
        return "curvlinops: float32/float64 only"
    return None


# --- penalty steps: hessalign_ext.penalties, kernel vs autograd backend --------------------


@contextlib.contextmanager
def _penalty_probes(problem: Problem, K: int, enabled: bool):
    """During a check: the autograd backend's torch.Generator probes become the op's probes."""
    if not enabled:
        yield
        return
    s = problem.shape
    mean_seed = penalties.mean_probe_seed(problem.seed)
    table = {problem.seed: op_probes(problem, K), mean_seed: op_probes(problem, K, mean_seed)}
    counters = {k: 0 for k in table}
    saved = autograd_reference._rademacher

    def fake(gen, like):
        key = gen.initial_seed()
        k = counters[key] % K
        counters[key] += 1
        return table[key][k].reshape(s.C, s.D).to(like.dtype)

    autograd_reference._rademacher = fake
    try:
        yield
    finally:
        autograd_reference._rademacher = saved


def _step_inputs(p: Problem):
    Z = p.features.detach().clone().requires_grad_(True)
    W, b = _leaf_params(p)
    return Z, W, b


def _penalty_call(p: Problem, case: Case, Z, W, b, backend: str, method: str):
    if case.op == "hgp_step":
        return penalties.hgp(Z, W, b, p.labels, p.offsets, alpha=HGP_ALPHA, beta=HGP_BETA, backend=backend,
                             method=method)
    K = case.K if case.op == "hutchinson_step" else None
    return penalties.hutchinson(Z, W, b, p.labels, p.offsets, alpha=HUTCH_ALPHA, beta=HUTCH_BETA, num_probes=K,
                                seed=p.seed, backend=backend)


def _step(backend: str, method: str = "auto"):
    def build(problem: Problem, case: Case, probes=None):
        p = problem
        Z, W, b = _step_inputs(p)
        exact_probes = probes is not None and backend == "autograd" and case.op == "hutchinson_step"

        def run():
            with _penalty_probes(p, case.K, exact_probes):
                pen = _penalty_call(p, case, Z, W, b, backend, method)
            gZ, gW, gb = autograd.grad(pen, (Z, W, b))
            return {"penalty": pen.detach(), "features": gZ, "weight": gW, "bias": gb}
        return run
    return build


def _na_step(backend: str):
    def na(problem: Problem, case: Case):
        cd = problem.shape.C * problem.shape.D
        if backend == "autograd" and case.op == "hutchinson_exact_step" and cd > AUTOGRAD_PENALTY_EXACT_MAX:
            return (f"autograd backend: the exact diagonal is C·D = {cd} separate HVPs per domain "
                    f"(> {AUTOGRAD_PENALTY_EXACT_MAX})")
        if backend == "autograd" and case.op == "hutchinson_step" and not hasattr(autograd_reference, "_rademacher"):
            return "autograd backend: its probes cannot be matched for the check (no _rademacher to patch)"
        return None
    return na


# --- the registry --------------------------------------------------------------------------


def _na_none(problem, case):
    return None


PROVIDERS: Dict[str, Provider] = {
    "ours": Provider("ours", _ours, _na_none, uses_probes=False),
    "closed_form": Provider("closed_form", _closed_form, _na_none, uses_probes=True),
    "autograd": Provider("autograd", _autograd, _na_exact(AUTOGRAD_EXACT_MAX, "autograd"), uses_probes=True),
    "torch_func": Provider("torch_func", _torch_func, _na_exact(AUTOGRAD_EXACT_MAX, "torch.func"), uses_probes=True),
    "backpack": Provider("backpack", _backpack, _na_backpack),
    "curvlinops": Provider("curvlinops", _curvlinops, _na_curvlinops, uses_probes=True),
}
STEP_PROVIDERS: Dict[str, Provider] = {
    "kernel": Provider("kernel", _step("kernel"), _na_step("kernel"), uses_probes=True),
    # HGP's kernel backend has three exact forms; "kernel" takes gram or fused (method="auto").
    "kernel_gram": Provider("kernel_gram", _step("kernel", "gram"), _na_step("kernel"), uses_probes=True),
    "kernel_fused": Provider("kernel_fused", _step("kernel", "fused"), _na_step("kernel"), uses_probes=True),
    "kernel_ops": Provider("kernel_ops", _step("kernel", "ops"), _na_step("kernel"), uses_probes=True),
    "autograd": Provider("autograd", _step("autograd"), _na_step("autograd"), uses_probes=True),
}
OP_PROVIDER_ORDER = ["ours", "closed_form", "autograd", "torch_func", "backpack", "curvlinops"]
STEP_PROVIDER_ORDER = ["kernel", "autograd", "kernel_gram", "kernel_fused", "kernel_ops"]
HGP_ONLY_PROVIDERS = ("kernel_gram", "kernel_fused", "kernel_ops")


def available(name: str) -> Optional[str]:
    """None when the provider's library imports, else the reason it is skipped."""
    mod = {"backpack": "backpack", "curvlinops": "curvlinops"}.get(name)
    if mod is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            __import__(mod)
    except Exception as exc:  # noqa: BLE001 - any import failure means "not installed here"
        return f"{mod} is not importable: {type(exc).__name__}"
    return None


def providers_for(case: Case) -> Dict[str, Provider]:
    if case.is_step:
        return {k: v for k, v in STEP_PROVIDERS.items() if case.op == "hgp_step" or k not in HGP_ONLY_PROVIDERS}
    return {k: PROVIDERS[k] for k in OP_PROVIDER_ORDER}


def reason_not_applicable(provider: Provider, problem: Problem, case: Case) -> Optional[str]:
    return available(provider.name) or provider.not_applicable(problem, case)


# ------------------------------------------------------------------------ float64 truth


def _f64(problem: Problem) -> Problem:
    return dataclasses.replace(problem, dtype=torch.float64, features=problem.features.double(),
                               weight=problem.weight.double(), bias=problem.bias.double(),
                               vectors=problem.vectors.double())


def truth(problem: Problem, case: Case):
    """The float64 reference output (hessalign_ext.reference) of ``case`` on ``problem``'s inputs."""
    p = _f64(problem)
    Z, W, b = p.head()
    if case.op == "domain_losses":
        return reference.domain_losses(Z, W, b, p.labels, p.offsets)
    if case.op == "head_grad":
        return reference.head_grad(Z, W, b, p.labels, p.offsets)
    if case.op == "head_hvp":
        return reference.head_hvp(Z, W, b, p.vectors, p.offsets)
    if case.op == "head_hessian_diag":
        return reference.head_hessian_diag(Z, W, b, p.offsets)
    if case.op == "head_hessian_trace":
        return reference.head_hessian_trace(Z, W, b, p.offsets)
    if case.op == "head_hessian_inner":
        return reference.head_hessian_inner(Z, W, b, p.offsets)
    if case.op == "hutchinson_diag":
        return reference.hutchinson_diag(Z, W, b, p.offsets, case.K, p.seed)
    if case.op == "hutchinson_trace":
        return reference.hutchinson_trace(Z, W, b, p.offsets, case.K, p.seed)
    return _penalty_truth(p, case)


def _penalty_truth(p: Problem, case: Case):
    """DESIGN.md §2's penalties built from the reference's quantities; gradients by autograd through them."""
    Z, W, b = (t.detach().clone().requires_grad_(True) for t in p.head())
    y, off, E = p.labels, p.offsets, p.shape.E
    g = reference.head_grad(Z, W, b, y, off)
    if case.op == "hgp_step":
        hg = reference.head_hvp(Z, W, b, g, off, labels=y)
        g_bar = g.detach().mean(0)
        target = reference.head_hvp(Z.detach(), W.detach(), b.detach(), g_bar, off, labels=y).detach().mean(0)
        alpha, beta, h_terms = HGP_ALPHA, HGP_BETA, (hg - target).pow(2).flatten(1).sum(1)
    else:
        if case.op == "hutchinson_step":
            dg = reference.hutchinson_diag(Z, W, b, off, case.K, p.seed, labels=y)
            d_bar = reference.hutchinson_diag(Z.detach(), W.detach(), b.detach(), off, case.K,
                                              penalties.mean_probe_seed(p.seed), labels=y).detach().mean(0)
        else:
            dg = reference.head_hessian_diag(Z, W, b, off, labels=y)
            d_bar = dg.detach().mean(0)
        alpha, beta, h_terms = HUTCH_ALPHA, HUTCH_BETA, (dg - d_bar).pow(2).flatten(1).sum(1)
    g_bar = g.detach().mean(0)
    pen = (alpha * h_terms + beta * (g - g_bar).pow(2).flatten(1).sum(1)).sum() / E
    gZ, gW, gb = autograd.grad(pen, (Z, W, b))
    return {"penalty": pen.detach(), "features": gZ, "weight": gW, "bias": gb}


def reference_affordable(shape: Shape, case: Case) -> bool:
    """Whether the float64 reference runs at this shape in reasonable time and memory."""
    cd = shape.C * shape.D
    if case.op in ("head_hessian_diag", "head_hessian_trace", "hutchinson_exact_step"):
        return cd <= 8192
    if case.op == "head_hessian_inner":
        return cd <= FULL_HESSIAN_MAX
    if case.K is not None:
        return case.K * cd <= 4_000_000
    return shape.N * shape.C * max(shape.D, 64) <= 2e9


def rel_error(actual, expected) -> float:
    """max |a - e| / max |e| over every tensor of the output (dicts for penalty steps)."""
    if isinstance(expected, dict):
        return max(rel_error(actual[k], expected[k]) for k in expected)
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if a.shape != e.shape:
        return math.inf
    scale = e.abs().max().item() if e.numel() else 0.0
    err = (a - e).abs().max().item() if e.numel() else 0.0
    return err / scale if scale > 0 else err


TOL = {torch.float32: 1e-3, torch.float64: 1e-9, torch.bfloat16: 5e-2, torch.float16: 2e-2}


def tolerance(case: Case, dtype: torch.dtype) -> float:
    """Largest rel_error accepted: float32 GEMMs over d ~ 2048 lose ~1e-6 relative; penalty
    gradients run through two more GEMM chains, hence the 5× for steps."""
    return TOL[dtype] * (5 if case.is_step else 1)


def check(provider: Provider, problem: Problem, case: Case, cache: Optional[dict] = None):
    """Runs ``provider`` against the float64 truth: (status "ok" | "mismatch", rel_error, tol, check shape id).

    At ``problem``'s shape when the reference affords it, else at ``shape.reduced()`` (same
    domains, small head). Hutchinson providers get the op's own probes.
    """
    cache = {} if cache is None else cache
    s = problem.shape
    cp = problem if reference_affordable(s, case) else make_problem(s.reduced(), problem.device, problem.dtype)
    key = (case.label, cp.shape.id, str(cp.dtype))
    if key not in cache:
        cache[key] = truth(cp, case)
    probes = op_probes(cp, case.K) if (case.K and provider.uses_probes) else None
    err = rel_error(provider.build(cp, case, probes)(), cache[key])
    tol = tolerance(case, problem.dtype)
    return ("ok" if err <= tol else "mismatch"), err, tol, cp.shape.id
