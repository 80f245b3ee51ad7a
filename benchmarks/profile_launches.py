"""Where a small head's time goes: launches, host time and device time per call, for each op
and penalty step and its peers (closed form, autograd) at one DomainBed shape.

At DomainBed shapes a GPU call is bound by the host (dispatch, allocation, launches and any
read-back), not by the device's arithmetic, so the benchmark's event-timed figure follows
the number of launches and syncs. This script counts them with torch.profiler and measures
three times per call:

- ``host us``: wall time of back-to-back calls, synchronised once at the end (throughput);
- ``event us``: one call between CUDA events, the median (what benchmarks/run.py reports);
- ``device us``: the sum of the call's kernel and copy durations (profiler), i.e. the time
  the GPU is busy; the rest of ``event us`` is the GPU waiting for the host.

Usage (from the repository root)::

    python benchmarks/profile_launches.py --device cuda --out profile.md [--shape 3,32,512,65 ...]
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import time

os.environ.setdefault("KINETO_LOG_LEVEL", "5")

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import providers as P  # noqa: E402
import timing  # noqa: E402  (its Clock: one call between CUDA events)

CASES = [P.Case(op) for op in ("domain_losses", "head_grad", "head_hvp", "head_hessian_diag", "head_hessian_trace",
                               "head_hessian_inner")]
CASES += [P.Case("hutchinson_diag", 10), P.Case("hutchinson_trace", 10)]
STEPS = [P.Case("hgp_step"), P.Case("hutchinson_exact_step")]  # autograd's exact step: C·D HVPs, skipped
OP_PEERS = ("ours", "closed_form", "closed_form_batched", "autograd")
STEP_PEERS = ("kernel", "kernel_gram", "kernel_fused", "kernel_ops", "autograd")


def sync(cuda: bool):
    if cuda:
        torch.cuda.synchronize()


def host_us(fn, cuda: bool, calls: int) -> float:
    sync(cuda)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(cuda)
    return (time.perf_counter() - t0) / calls * 1e6


def event_us(fn, calls: int) -> float:
    clock = timing.Clock("cuda")
    return statistics.median(clock.once(fn) for _ in range(calls)) * 1e6


def trace(fn, cuda: bool):
    """(kernel launches, copies, syncs, device us, kernel names) of one call."""
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync(cuda)
    with profile(activities=acts) as prof:
        fn()
        sync(cuda)
    kernels, copies, busy, names = 0, 0, 0.0, []
    syncs = 0
    for e in prof.events():
        if e.name in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpy", "cudaEventSynchronize"):
            syncs += 1
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        busy += e.device_time
        if "Memcpy" in e.name or "Memset" in e.name:
            copies += 1
        else:
            kernels += 1
            names.append(e.name)
    return kernels, copies, syncs, busy, names


_BASELINE = {}


def call_syncs(fn, cuda: bool):
    """trace(fn) with the syncs of an empty call subtracted: our trailing sync() and any the
    profiler makes itself are not the call's."""
    if cuda not in _BASELINE:
        _BASELINE[cuda] = trace(lambda: None, cuda)[2]
    k, c, s, busy, names = trace(fn, cuda)
    return k, c, max(0, s - _BASELINE[cuda]), busy, names


def profile_shape(shape: P.Shape, device: str, calls: int) -> list:
    cuda = device == "cuda"
    problem = P.make_problem(shape, device, torch.float32)
    lines = ["", f"## {shape.id}", "",
             "| case | provider | kernels | copies | syncs | device us | event us | host us |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    kernel_lists = []
    for case in CASES + STEPS:
        peers = STEP_PEERS if case.is_step else OP_PEERS
        for name in peers:
            provider = (P.STEP_PROVIDERS if case.is_step else P.PROVIDERS)[name]
            if (case.op != "hgp_step" and name in P.HGP_ONLY_PROVIDERS) or (case.op == "hutchinson_exact_step"
                                                                              and name == "autograd"):
                continue
            if P.reason_not_applicable(provider, problem, case):
                continue
            fn = provider.build(problem, case)
            host_us(fn, cuda, 1)  # warm-up
            once = host_us(fn, cuda, 1)
            n = int(min(calls, max(3, 0.25e6 / once)))  # about a quarter second per measurement
            k, c, s, busy, names = call_syncs(fn, cuda)
            ev = f"{event_us(fn, min(n, 50)):.1f}" if cuda else "-"
            lines.append(f"| {case.label} | {name} | {k} | {c} | {s} | {busy:.1f} | {ev} | "
                         f"{host_us(fn, cuda, n):.1f} |")
            print(lines[-1], flush=True)
            if name in ("ours", "kernel") and cuda:
                kernel_lists.append(f"- {case.label} ({name}): " + ", ".join(x[:60] for x in names))
    return lines + ["", f"Kernels of each call of ours at {shape.id}:", ""] + kernel_lists


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shape", nargs="+", default=["3,32,512,65"], help="E,n,d,C (one or more)")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--out", help="markdown file (default: print only)")
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    lines = [f"# Launch profile, float32, {args.device}", "",
             f"- date: {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}",
             f"- device: {torch.cuda.get_device_name() if cuda else 'cpu'}; torch {torch.__version__}",
             f"- command: `python benchmarks/profile_launches.py {' '.join(sys.argv[1:])}`",
             "- host us: back-to-back calls, one sync at the end; event us: one call between CUDA events "
             "(median); device us: the call's kernels and copies (profiler); syncs: host waits inside the call"]
    for spec in args.shape:  # written after each shape: a run cut short keeps what it measured
        lines += profile_shape(P.Shape(*(int(x) for x in spec.split(",")), "profile"), args.device, args.calls)
        if args.out:
            with open(args.out, "w") as f:
                f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
