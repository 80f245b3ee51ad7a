"""torch_func: grad, the HVP as jvp of grad, Hutchinson as vmap of that HVP over probe chunks,
the exact diagonal as vmap over one-hot vectors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .problems import Case, Problem, ProbeSource, augment, join_block, one_hot_diagonal, split_block


def _tf_loss(W, b, z, y):
    return F.cross_entropy(F.linear(z, W, b), y)


def _tf_hvp_fn(z, y):
    g = torch.func.grad(_tf_loss, argnums=(0, 1))

    def hvp(W, b, vW, vb):
        return torch.func.jvp(lambda W_, b_: g(W_, b_, z, y), (W, b), (vW, vb))[1]
    return hvp


def _tf_exact_diag(p: Problem):
    out = []
    for lo, hi in p.spans:
        batched = torch.func.vmap(_tf_hvp_fn(p.features[lo:hi], p.labels[lo:hi]), in_dims=(None, None, 0, 0))
        out.append(one_hot_diagonal(p, lambda V: join_block(*batched(p.weight, p.bias, *split_block(V, p.shape.d)))))
    return torch.stack(out)


def _tf_hutchinson(p: Problem, src: ProbeSource, diag: bool):
    s = p.shape
    fns = [torch.func.vmap(_tf_hvp_fn(p.features[lo:hi], p.labels[lo:hi]), in_dims=(None, None, 0, 0))
           for lo, hi in p.spans]
    acc = [torch.zeros(s.C, s.D, dtype=p.dtype, device=p.device) if diag else 0.0 for _ in fns]
    for k0, B in src.chunks():
        V = src(k0, B)
        vW, vb = split_block(V, s.d)
        for e, fn in enumerate(fns):
            hv = join_block(*fn(p.weight, p.bias, vW, vb))
            acc[e] = acc[e] + ((V * hv).sum(0) if diag else (V * hv).sum())
    return torch.stack(acc) / src.K


def build(problem: Problem, case: Case, probes=None):
    p = problem
    d = p.shape.d
    if case.op == "head_grad":
        g = torch.func.grad(_tf_loss, argnums=(0, 1))
        return lambda: torch.stack([join_block(*g(p.weight, p.bias, p.features[s:t], p.labels[s:t]))
                                    for s, t in p.spans])
    if case.op == "head_hvp":
        def run():
            return torch.stack([join_block(*_tf_hvp_fn(p.features[s:t], p.labels[s:t])(p.weight, p.bias,
                                                                                  *split_block(p.vectors[e], d)))
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
                theta = join_block(p.weight, p.bias)
                f = lambda th: F.cross_entropy(augment(p.features[s:t]) @ th.T, p.labels[s:t])  # noqa: E731
                hs.append(torch.func.hessian(f)(theta).reshape(theta.numel(), -1))
            H = torch.stack(hs).flatten(1).double()  # float32 sums of (C·D)² terms lose ~3e-3
            return (H @ H.T).to(p.dtype)
        return run
    if case.op in ("hutchinson_diag", "hutchinson_trace"):
        src = ProbeSource(p, case.K, probes)
        diag = case.op == "hutchinson_diag"
        return lambda: _tf_hutchinson(p, src, diag)
    raise KeyError(case.op)
