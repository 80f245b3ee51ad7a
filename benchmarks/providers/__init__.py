"""What the benchmarks time: every op and penalty step, by every provider a user could pick.

A *case* is an op (or a penalty step) with its probe count K where it has one; a *shape* is a
head (E domains of n rows, d features, C classes, with a bias). For a case, each provider
builds a zero-argument callable on a :class:`Problem` (``build(problem, case) -> run``) that
returns the op's output in the op's layout ((E, C, D) parameter blocks with the bias as last
column, (E,) or (E, E)), so every provider can be checked against the float64 truth of
``hessalign_ext.reference`` before it is timed. Set-up a user would do once (modules, BackPACK's
``extend``, detached leaf copies) happens in ``build``; everything a training step repeats
happens in ``run``.

Providers (``PROVIDERS``, one module each; ``problems.py`` holds the cases, heads and inputs,
``truth.py`` the float64 truth and the check):

- ``ours``: the fused op of ``hessalign_ext.ops`` (all domains in one call).
- ``ours_blas``: the same with every GEMM on the vendor BLAS, in the same run: on the CPU
  ``HESSALIGN_CPU_GEMM=aten`` (what the ops' own GEMM ways, the few-rows and few-classes kernels
  and oneDNN, buy), on CUDA ``HESSALIGN_LOGITS_KERNEL=0`` (what a small head's logits in one
  launch of ``csrc/cuda/logits_kernels.cuh`` buy over cuBLAS).
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
- ``closed_form_batched`` (``batched.py``): the same formulas with all domains in the same torch
  calls (one logits GEMM, batched per-domain products): the strongest plain-PyTorch peer, what
  the ops' fusion buys beyond batching.
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

import warnings
from typing import Dict, Optional

from . import autograd, backpack, batched, closed_form, curvlinops, ours, steps, torch_func
from .problems import (  # noqa: F401  (the names benchmarks/run.py, plan.py and the pytest suites use)
    AUTOGRAD_EXACT_MAX, OPS, PENALTY_STEPS, PROBE_CASES, Case, Problem, Provider, Shape, make_problem,
    not_applicable_past,
)
from .truth import check  # noqa: F401


def _step_provider(name: str, backend: str, method: str = "auto") -> Provider:
    return Provider(name, steps.builder(backend, method), steps.not_applicable_for(backend), uses_probes=True)


PROVIDERS: Dict[str, Provider] = {
    "ours": Provider("ours", ours.build),
    "ours_blas": Provider("ours_blas", ours.build_blas, ours.blas_not_applicable),
    "closed_form": Provider("closed_form", closed_form.build, uses_probes=True),
    "closed_form_batched": Provider("closed_form_batched", batched.build, uses_probes=True),
    "autograd": Provider("autograd", autograd.build, not_applicable_past(AUTOGRAD_EXACT_MAX, "autograd"),
                         uses_probes=True),
    "torch_func": Provider("torch_func", torch_func.build, not_applicable_past(AUTOGRAD_EXACT_MAX, "torch.func"),
                           uses_probes=True),
    "backpack": Provider("backpack", backpack.build, backpack.not_applicable),
    "curvlinops": Provider("curvlinops", curvlinops.build, curvlinops.not_applicable, uses_probes=True),
}
STEP_PROVIDERS: Dict[str, Provider] = {
    "kernel": _step_provider("kernel", "kernel"),
    # HGP's kernel backend has three exact forms; "kernel" takes gram or fused (method="auto").
    "kernel_gram": _step_provider("kernel_gram", "kernel", "gram"),
    "kernel_fused": _step_provider("kernel_fused", "kernel", "fused"),
    "kernel_ops": _step_provider("kernel_ops", "kernel", "ops"),
    "autograd": _step_provider("autograd", "autograd"),
}
OP_PROVIDER_ORDER = ["ours", "ours_blas", "closed_form", "closed_form_batched", "autograd", "torch_func", "backpack",
                     "curvlinops"]
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
