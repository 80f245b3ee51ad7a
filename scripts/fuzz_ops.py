#!/usr/bin/env python3
"""Randomized differential campaign over the ops, longer and wilder than the test suite's fixed cases.

Each case draws a random problem from its own seed (1 to 6 domains, empty and one-row domains,
C up to 70, d up to 40, with or without bias, non-contiguous features, logits shifted by 30,
random loss options and class tiles, 1 to 80 probes) and checks one thing:

- ``forward``:   every op in float64 against the float64 double-backward reference;
- ``gradcheck``: every op's closed-form backward against finite differences (tiny problems);
- ``emu``:       the CUDA kernels under CPU emulation (tests/emu) against the CPU ops, float64 and
                 float32, forward and backward ops, with the logits kernel on or off, up to 600 rows
                 and 300 classes (the launch paths past the fused kernels' limits);
- ``penalties``: HGP (gram, fused, ops), exact Hutchinson and full alignment, kernel backend against
                 the autograd backend, value and gradients, float64;
- ``bad``:       a valid problem with one argument broken; an invalid one must raise ValueError,
                 RuntimeError, TypeError or NotImplementedError, and nothing may crash.

A failure prints its seed; ``--seed S --cases 1`` replays it. Its first version found
head_hessian_inner's float32 cancellation at confident rows (``emu``: float32 against the CPU op's
float32, which disagreed in sign on a one-row domain).

    .venv/bin/python scripts/fuzz_ops.py forward --seconds 600
    .venv/bin/python scripts/fuzz_ops.py emu --seed 123 --cases 1
"""
from __future__ import annotations

import argparse
import itertools
import os
import pathlib
import random
import sys
import time

import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "emu"))

import hessalign_ext  # noqa: E402
from hessalign_ext import penalties, reference  # noqa: E402

OPS = ["domain_losses", "head_grad", "head_hvp", "head_hessian_diag", "head_hessian_trace", "head_hessian_inner",
       "hutchinson_diag", "hutchinson_trace"]


def problem(r: random.Random, max_rows=40, max_C=70, max_d=40, dtype=torch.float64) -> dict:
    E = r.randint(1, 6)
    sizes = [r.choice([0, 1, r.randint(0, max_rows)]) if r.random() < 0.3 else r.randint(1, max_rows) for _ in range(E)]
    sizes[0] = max(sizes[0], 1 if sum(sizes) == 0 else 0)
    C, d, bias = r.randint(1, max_C), r.randint(1, max_d), r.random() < 0.7
    g = torch.Generator().manual_seed(r.randint(0, 2**31))
    N = sum(sizes)
    scale = r.choice([0.3, 1.0, 3.0])
    X = torch.randn(N, d, generator=g, dtype=torch.float64) * scale
    if r.random() < 0.2:  # non-contiguous features
        X = torch.cat([X, X], 1)[:, ::2] if r.random() < 0.5 else X.t().contiguous().t()
    W = torch.randn(C, d, generator=g, dtype=torch.float64) * d**-0.5 * scale
    b = torch.randn(C, generator=g, dtype=torch.float64) + r.choice([0.0, 0.0, 30.0]) if bias else None
    labels = torch.randint(0, C, (N,), generator=g)
    opts: dict = {}
    if r.random() < 0.85:
        ignore = r.choice([-100, -1, r.randint(0, C - 1)])
        if N and r.random() < 0.5:
            labels[torch.randperm(N, generator=g)[: r.randint(0, N)]] = ignore
        opts = dict(labels=labels, ignore_index=ignore)
        if r.random() < 0.3:
            opts["class_weight"] = (torch.rand(C, generator=g, dtype=torch.float64) + 0.2).to(dtype)
        if r.random() < 0.3:
            opts["label_smoothing"] = r.choice([0.1, 0.5, 1.0])
        if r.random() < 0.3:
            opts["reduction"] = "sum"
    if r.random() < 0.4:
        opts["class_tile"] = r.randint(1, C + 2)
    shared = r.random() < 0.3
    V = torch.randn(*(() if shared else (E,)), C, d + bias, generator=g, dtype=torch.float64)
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    shown = {k: "tensor" if torch.is_tensor(v) else v for k, v in opts.items()}
    return dict(X=cast(X), W=cast(W), b=cast(b), offsets=torch.tensor([0, *itertools.accumulate(sizes)]),
                labels=labels, opts=opts, V=cast(V), K=r.choice([1, 2, 7, r.randint(1, 80)]), seed=r.randint(0, 2**40),
                desc=f"sizes={sizes} C={C} d={d} bias={bias} {dtype} opts={shown}")


def call(lib, op: str, p: dict):
    """The public signature of `op` (hessalign_ext or reference)."""
    o = dict(p["opts"])
    f = getattr(lib, op)
    head = (p["X"], p["W"], p["b"])
    if op in ("domain_losses", "head_grad"):
        return f(*head, o.pop("labels", p["labels"]), p["offsets"], **o)
    if op == "head_hvp":
        return f(*head, p["V"], p["offsets"], **o)
    if op.startswith("hutchinson"):
        return f(*head, p["offsets"], p["K"], p["seed"], **o)
    return f(*head, p["offsets"], **o)


def schema_args(op: str, p: dict) -> tuple:
    """The torch.ops schema's positional arguments (for the emulated library and backward ops)."""
    o = dict(p["opts"])
    labels = o.pop("labels", None)
    ce = (o.get("ignore_index", -100), o.get("class_weight"), o.get("label_smoothing", 0.0),
          o.get("reduction", "mean"), o.get("class_tile", 0))
    head = (p["X"], p["W"], p["b"])
    if op in ("domain_losses", "head_grad"):
        return (*head, p["labels"] if labels is None else labels, p["offsets"], *ce)
    if op == "head_hvp":
        return (*head, p["V"], p["offsets"], labels, *ce)
    if op.startswith("hutchinson"):
        return (*head, p["offsets"], p["K"], p["seed"], labels, *ce)
    return (*head, p["offsets"], labels, *ce)


def close(actual, expected, rtol, atol, what):
    """Relative, with the absolute floor scaled by the expected tensor's largest entry."""
    scale = expected.abs().max().item() if expected.numel() else 1.0
    try:
        torch.testing.assert_close(actual.detach().double(), expected.detach().double(), rtol=rtol,
                                   atol=atol * max(scale, 1.0))
    except AssertionError as ex:
        raise AssertionError(f"{what}: {str(ex)[:400]}") from None


def check_forward(r):
    p, op = problem(r), r.choice(OPS)
    if op != "head_hessian_inner" or p["X"].shape[0] <= 150:  # the reference forms each Hessian
        close(call(hessalign_ext, op, p), call(reference, op, p), 1e-9, 1e-10, f"{op} {p['desc']}")


def check_gradcheck(r):
    p, op = problem(r, max_rows=5, max_C=5, max_d=4), r.choice(OPS)
    args = (p["X"].detach().clone().requires_grad_(), p["W"].clone().requires_grad_(),
            None if p["b"] is None else p["b"].clone().requires_grad_(), p["V"].clone().requires_grad_())
    # gradcheck's atol is absolute: outputs up to 1e4 (K² = ‖z̃‖⁴ in head_hessian_inner) are scaled to 1,
    # or the float64 rounding of the central differences alone would exceed it
    out = call(hessalign_ext, op, p)
    scale = max(1.0, out.abs().max().item()) if out.numel() else 1.0
    fn = lambda X, W, b, V: call(hessalign_ext, op, dict(p, X=X, W=W, b=b, V=V)) / scale  # noqa: E731
    try:
        torch.autograd.gradcheck(fn, args, atol=1e-6, rtol=1e-5)
    except Exception as ex:  # noqa: BLE001  (gradcheck's own error type)
        raise AssertionError(f"{op} {p['desc']}: {str(ex)[:400]}") from None


def check_emu(r):
    import build as emu_build
    emu_build.load()
    dtype = r.choice([torch.float64, torch.float32])
    big = r.random() < 0.25
    p = problem(r, max_rows=600 if big else 40, max_C=300 if big else 70, max_d=12 if big else 40, dtype=dtype)
    op = r.choice(OPS)
    if op == "head_hessian_inner" and p["X"].shape[0] > 300:
        return
    if r.random() < 0.3:
        os.environ["HESSALIGN_LOGITS_KERNEL"] = "0"
    else:
        os.environ.pop("HESSALIGN_LOGITS_KERNEL", None)
    args = schema_args(op, p)
    cpu, emu = getattr(torch.ops.hessalign_ext, op), getattr(torch.ops.hessalign_emu, op)
    # float32: warp-order and sequential sums round differently (tests/test_cuda_emulated.py's rule)
    rtol, atol = (1e-9, 1e-11) if dtype == torch.float64 else (1e-4, 1e-4)
    expected = cpu(*args)
    close(emu(*args), expected, rtol, atol, f"{op} forward {p['desc']}")
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(p["seed"] % 2**31), dtype=dtype)
    for i, (a, c) in enumerate(zip(getattr(torch.ops.hessalign_emu, f"_{op}_backward")(grad, *args),
                                   getattr(torch.ops.hessalign_ext, f"_{op}_backward")(grad, *args))):
        close(a, c, rtol, atol, f"{op} backward[{i}] {p['desc']}")


def check_penalties(r):
    p = problem(r, max_rows=12, max_C=6, max_d=6)
    opts = dict(p["opts"])
    opts.pop("class_tile", None)
    labels = opts.pop("labels", p["labels"])
    which = r.choice(["hgp_gram", "hgp_fused", "hgp_ops", "hutchinson_exact", "full"])
    alpha, beta = r.choice([(1.0, 0.0), (0.0, 1.0), (0.7, 0.3)])

    def evaluate(backend):
        X, W = p["X"].detach().clone().requires_grad_(), p["W"].clone().requires_grad_()
        b = None if p["b"] is None else p["b"].clone().requires_grad_()
        if which.startswith("hgp"):
            method = {} if backend == "autograd" else dict(method=which[4:])
            value = penalties.hgp(X, W, b, labels, p["offsets"], alpha, beta, backend=backend, **method, **opts)
        elif which == "full":
            value = penalties.hessian_alignment_full(X, W, b, labels, p["offsets"], alpha, beta, backend=backend,
                                                     **opts)
        else:
            value = penalties.hutchinson(X, W, b, labels, p["offsets"], alpha, beta, num_probes=None, backend=backend,
                                         **opts)
        inputs = [t for t in (X, W, b) if t is not None]
        return value, torch.autograd.grad(value, inputs, allow_unused=True)

    (v1, g1), (v2, g2) = evaluate("kernel"), evaluate("autograd")
    what = f"{which} alpha={alpha} beta={beta} {p['desc']}"
    close(v1, v2, 1e-7, 1e-10, what)
    for a, e in zip(g1, g2):
        zero = lambda t: t is None or not bool(t.abs().max() > 0)  # noqa: E731
        if a is None or e is None:
            assert zero(a) and zero(e), f"{what}: one backend's gradient is absent, the other's is not zero"
        else:
            close(a, e, 1e-6, 1e-9, f"{what} gradient")


# check_bad's mutations; those in ALWAYS_INVALID must raise, the others where the problem makes them invalid
BAD = ["off_unsorted", "off_short", "off_end", "off_neg", "off_empty", "off_int32", "off_2d", "lab_range", "lab_int32",
       "lab_len", "X_float32", "X_int", "X_1d", "X_nan", "W_cols", "W_float32", "b_len", "V_shape", "K0", "K_neg",
       "tile_0", "cw_len", "smoothing", "reduction", "huge_ignore", "X_meta"]
ALWAYS_INVALID = {"off_end", "off_neg", "off_empty", "off_int32", "off_2d", "lab_int32", "lab_len", "X_float32",
                  "X_int", "X_1d", "X_meta", "W_cols", "W_float32", "b_len", "smoothing", "reduction", "cw_len",
                  "tile_0"}


def check_bad(r):
    p, op, m = problem(r, max_rows=8, max_C=6, max_d=5), r.choice(OPS), r.choice(BAD)
    E, (N, d), C = p["offsets"].numel() - 1, p["X"].shape, p["W"].shape[0]
    X, W, b, off, lab, V, K = p["X"], p["W"], p["b"], p["offsets"].clone(), p["labels"].clone(), p["V"], p["K"]
    o = dict(p["opts"])
    o.pop("labels", None)
    invalid = set(ALWAYS_INVALID)
    if m == "off_unsorted" and E >= 2:
        off[1], off[2] = off[2].item() + 1, off[1].item()
        invalid.add(m)
    elif m == "lab_range" and N:
        lab[r.randrange(N)] = r.choice([C, C + 5, -2, 2**40])
        invalid.add(m)
    edits = {
        "off_short": lambda: dict(off=off[:1]), "off_end": lambda: dict(off=torch.cat([off[:-1], off[-1:] + 1])),
        "off_neg": lambda: dict(off=torch.cat([off[:1] - 1, off[1:]])), "off_empty": lambda: dict(off=off[:0]),
        "off_int32": lambda: dict(off=off.int()), "off_2d": lambda: dict(off=off[None]),
        "lab_int32": lambda: dict(lab=lab.int()), "lab_len": lambda: dict(lab=lab[:-1] if N else lab.new_zeros(1)),
        "X_float32": lambda: dict(X=X.float()), "X_int": lambda: dict(X=X.long()),
        "X_1d": lambda: dict(X=X.reshape(-1)),
        "X_nan": lambda: dict(X=X.contiguous().index_fill(0, torch.tensor([0]), float("nan")) if N else X),
        "W_cols": lambda: dict(W=torch.randn(C, d + 1, dtype=W.dtype)), "W_float32": lambda: dict(W=W.float()),
        "b_len": lambda: dict(b=torch.randn(C + 1, dtype=X.dtype)),
        "V_shape": lambda: dict(V=torch.randn(E + 1, C, d + 1, dtype=X.dtype)),
        "K0": lambda: dict(K=0), "K_neg": lambda: dict(K=-3), "X_meta": lambda: dict(X=X.to("meta")),
    }
    changed = edits.get(m, dict)()
    X, W, b, off, lab, V, K = (changed.get(k, v) for k, v in
                               dict(X=X, W=W, b=b, off=off, lab=lab, V=V, K=K).items())
    if m == "tile_0":
        o["class_tile"] = 0
    elif m == "cw_len":
        o["class_weight"] = torch.rand(C + 2, dtype=p["X"].dtype)
    elif m == "smoothing":
        o["label_smoothing"] = r.choice([-0.1, 1.5, float("nan")])
    elif m == "reduction":
        o["reduction"] = "none"
    elif m == "huge_ignore":
        o["ignore_index"] = 2**62
    if op.startswith("hutchinson"):
        invalid |= {"K0", "K_neg"}
    if op == "head_hvp":
        invalid.add("V_shape")
    if m == "off_short" and N:
        invalid.add(m)
    head = (X, W, b)
    try:
        if op in ("domain_losses", "head_grad"):
            getattr(hessalign_ext, op)(*head, lab, off, **o)
        elif op == "head_hvp":
            hessalign_ext.head_hvp(*head, V, off, labels=lab, **o)
        elif op.startswith("hutchinson"):
            getattr(hessalign_ext, op)(*head, off, K, p["seed"], labels=lab, **o)
        else:
            getattr(hessalign_ext, op)(*head, off, labels=lab, **o)
    except (ValueError, RuntimeError, TypeError, NotImplementedError):
        return
    assert m not in invalid, f"{op} accepted {m}: {p['desc']}"


CHECKS = dict(forward=check_forward, gradcheck=check_gradcheck, emu=check_emu, penalties=check_penalties,
              bad=check_bad)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("check", choices=sorted(CHECKS))
    ap.add_argument("--seconds", type=float, default=300.0, help="stop starting cases after this long")
    ap.add_argument("--cases", type=int, default=None, help="stop after this many cases")
    ap.add_argument("--seed", type=int, default=0, help="seed of the first case (cases take consecutive seeds)")
    ap.add_argument("--max-failures", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    fn, t0, failures, n = CHECKS[args.check], time.time(), 0, 0
    for seed in itertools.count(args.seed):
        if time.time() - t0 > args.seconds or (args.cases is not None and n >= args.cases):
            break
        n += 1
        try:
            fn(random.Random(seed))
        except Exception as ex:  # noqa: BLE001  (every failure is reported with its seed)
            failures += 1
            print(f"FAIL seed={seed}: {type(ex).__name__}: {ex}", flush=True)
            if failures >= args.max_failures:
                break
    print(f"{args.check}: {n} cases from seed {args.seed}, {failures} failures, {time.time() - t0:.0f} s", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
