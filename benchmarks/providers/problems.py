"""The benchmark problems: cases (an op or penalty step, K probes), heads, their random inputs,
the probes the providers draw, and the limits past which a provider does not run."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Optional

import torch

from hessalign_ext import probes as hprobes


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


def split_block(block: torch.Tensor, d: int):
    """(…, C, D) block -> (…, C, d) weight part, (…, C) bias part."""
    return block[..., :d], block[..., d]


def join_block(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cat([w, b.unsqueeze(-1)], dim=-1)


def augment(z: torch.Tensor) -> torch.Tensor:
    return torch.cat([z, z.new_ones(z.shape[0], 1)], dim=1)


def probe_chunk(shape: Shape) -> int:
    return max(1, PROBE_CHUNK_ELEMS // (shape.C * shape.D))


def draw_probes(B: int, C: int, D: int, like: torch.Tensor) -> torch.Tensor:
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
        return draw_probes(B, s.C, s.D, self.p.features)

    def chunks(self):
        B = probe_chunk(self.p.shape)
        for k0 in range(0, self.K, B):
            yield k0, min(B, self.K - k0)


def op_probes(problem: Problem, K: int, seed: Optional[int] = None) -> torch.Tensor:
    """The probes the op draws for ``seed``: (K, C, D) in the problem's dtype and device."""
    s = problem.shape
    pr = hprobes.rademacher_probes(problem.seed if seed is None else seed, K, s.C, s.D)
    return pr.to(problem.device, problem.dtype)


def formula_build(problem: Problem, case: Case, probes, simple: dict, hutchinson: Callable):
    """``build`` of a provider written as torch formulas: ``simple`` maps an op to ``f(problem)``;
    the Hutchinson ops call ``hutchinson(problem, probe source, diag)``."""
    if case.op in simple:
        fn = simple[case.op]
        return lambda: fn(problem)
    if case.op in ("hutchinson_diag", "hutchinson_trace"):
        src = ProbeSource(problem, case.K, probes)
        diag = case.op == "hutchinson_diag"
        return lambda: hutchinson(problem, src, diag)
    raise KeyError(case.op)


def one_hot_diagonal(p: Problem, hvps) -> torch.Tensor:
    """diag(H) (C, D) of one domain from its batched HVPs ``hvps(V (B, C, D)) -> (B, C, D)``, with
    the C·D one-hot vectors ONE_HOT_CHUNK at a time (autograd and torch.func: what they offer)."""
    C, D = p.shape.C, p.shape.D
    n = C * D
    parts = []
    for j0 in range(0, n, ONE_HOT_CHUNK):
        j1 = min(n, j0 + ONE_HOT_CHUNK)
        idx = torch.arange(j0, j1, device=p.device)
        basis = torch.zeros(j1 - j0, n, dtype=p.dtype, device=p.device)
        basis[torch.arange(j1 - j0, device=p.device), idx] = 1
        parts.append(hvps(basis.view(-1, C, D)).reshape(j1 - j0, n).gather(1, idx[:, None]).squeeze(1))
    return torch.cat(parts).view(C, D)


def linear_module(p: Problem):
    lin = torch.nn.Linear(p.shape.d, p.shape.C).to(p.device, p.dtype)
    with torch.no_grad():
        lin.weight.copy_(p.weight)
        lin.bias.copy_(p.bias)
    return lin


def leaf_params(p: Problem):
    W = p.weight.detach().clone().requires_grad_(True)
    b = p.bias.detach().clone().requires_grad_(True)
    return W, b


def not_applicable_past(limit: int, what: str):
    """Why a provider without a closed form (``what``) skips a case: the exact diagonal past ``limit``
    one-hot HVPs, explicit Hessians past FULL_HESSIAN_MAX, a forward loss."""
    def na(problem: Problem, case: Case):
        cd = problem.shape.C * problem.shape.D
        if case.op in ("head_hessian_diag", "head_hessian_trace") and cd > limit:
            return f"{what}: exact diagonal needs C·D = {cd} one-hot HVPs per domain (> {limit})"
        if case.op == "head_hessian_inner" and cd > FULL_HESSIAN_MAX:
            return f"{what}: explicit Hessians of C·D = {cd} (> {FULL_HESSIAN_MAX})"
        if case.op == "domain_losses":
            return f"{what}: a forward loss, nothing to differentiate (closed_form is the same code)"
        return None
    return na


@dataclasses.dataclass
class Provider:
    """One way to compute a case: ``build(problem, case, probes=None) -> run``, and why it does not apply."""

    name: str
    build: Callable  # (problem, case, probes=None) -> run
    not_applicable: Callable = lambda problem, case: None  # -> reason or None
    uses_probes: bool = False  # build takes the op's probes for the reference check
