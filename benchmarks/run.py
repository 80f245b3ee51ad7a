"""Benchmark every op and penalty step against its peers; print the ratios, write JSON and plots.

Usage (from the repository root)::

    python benchmarks/run.py                        # CPU, full (DomainBed + reduced large + scaling)
    python benchmarks/run.py --quick                # short subset (what scripts/gpu_check.sh runs)
    python benchmarks/run.py --device cuda --quick --out "$OUT"
    python benchmarks/run.py --dtype bfloat16 --device cuda

For each (case, shape, dtype) it

1. checks every applicable provider (benchmarks/providers/) against the float64 truth of
   ``hessalign_ext.reference`` (at the benchmark shape when the reference affords it, else at
   a reduced head with the same domains; Hutchinson providers get the op's own probes), and
   skips, with the reason recorded, any provider that disagrees or does not apply;
2. times the providers interleaved, round after round (so a change of machine load hits all
   of them alike): warm-up, then single calls timed with ``time.perf_counter`` (CPU) or CUDA
   events (GPU); reports the median, p20 and p80 of the single-call times;
3. measures peak memory: on CUDA in the first timed call, ``max_memory_allocated`` minus the
   memory allocated before the call; on CPU in one extra call, the peak of the bytes held by torch's CPU allocator
   during the call, from the profiler's memory events (``torch.profiler``, ``profile_memory``:
   allocations and frees of tensors, the CPU analogue of ``max_memory_allocated``), and, as a
   second figure, the process's peak RSS growth (``VmHWM`` after resetting it through
   ``/proc/self/clear_refs``, after ``malloc_trim``; pages glibc kept from earlier calls are
   not counted, so it can undercount);
4. counts each op's FLOPs (DESIGN.md §4: every GEMM is N·D·C multiply-adds, 2·N·D·C FLOPs)
   and reports GFLOP/s and the multiple of the floor, i.e. the time of those GEMMs at the rate
   of a ``torch.mm`` of (N, d) by (d, C) (the caller's aligned layout) measured in the same run;
   and its fewest bytes (each input read once, each output written once: plan.min_bytes),
   GB/s and the multiple of the byte floor at a large copy's rate in the same run; the
   roofline floor is the larger of the two times.

Outputs in ``--out``: ``<date>_<device>[_quick][_<dtype>].json`` (a ``meta`` block and one
record per op/case, provider, mode, shape and dtype), the same name ``.md`` (the command,
date, device, versions, the ratio tables and the targets of issue 4), and
``..._scaling_{C,N,K,E}.png`` plots (matplotlib, Agg; skipped if matplotlib is missing).

This file runs the jobs; plan.py says what runs (heads, cases, FLOPs), providers/ how each
provider computes a case, timing.py how calls are timed and memory measured, report.py what is
written.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
import warnings

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the CPU memory pass uses the profiler: keep it quiet

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import providers as P  # noqa: E402
from plan import every_case, flops, min_bytes, plan  # noqa: E402
from report import plots, report  # noqa: E402
from timing import Clock, copy_gbps, cpu_peak_memory, gemm_gflops, measure, quantiles  # noqa: E402

warnings.filterwarnings("ignore", message="Full backward hook is firing")  # BackPACK, inputs without grad
warnings.filterwarnings("ignore", category=FutureWarning)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}

# ------------------------------------------------------------------------------ meta


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def git_sha():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        sha = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=root, text=True,
                                      stderr=subprocess.DEVNULL).strip()
        dirty = subprocess.call(["git", "diff", "--quiet", "HEAD", "--", "csrc", "hessalign_ext"], cwd=root,
                                stderr=subprocess.DEVNULL) != 0
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_meta(device: str):
    if device == "cuda":
        return {"device_name": torch.cuda.get_device_name(), "cuda": torch.version.cuda,
                "capability": ".".join(map(str, torch.cuda.get_device_capability()))}
    return {"device_name": f"{cpu_model()} ({os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()})",
            "cuda": torch.version.cuda}


# ------------------------------------------------------------------------------- run


def run_job(job, args, clock, dtype, meta, log):
    """Checks, times (interleaved) and measures every provider of one (case, shape).

    A job tagged "scaling-E" with E > 1 also times the same providers on one domain of E·n rows
    in the same interleaved rounds, so the fusion ratio is not at the mercy of the machine's load.
    """
    case, shape, only, tags = job
    if args.providers is not None:  # ours (a step's kernel) always: the ratios' denominator
        keep = set(args.providers) | {"kernel" if case.is_step else "ours"}
        only = [n for n in (only or keep) if n in keep]
    device = args.device
    t_job, check_s = time.perf_counter(), 0.0
    truth_cache = {}
    mode = "step" if case.is_step else "forward"
    provs = P.providers_for(case)
    names = [n for n in provs if only is None or n in only]
    variants = [("", shape, sorted(tags))]
    if "scaling-E" in tags and shape.E > 1:
        variants.append(("@1domain", P.Shape(1, shape.N, shape.d, shape.C, "scaling-E1"), ["scaling-E1"]))
    records, runnable, fl_of, warm, peaks = [], {}, {}, {}, {}
    for suffix, sh, tg in variants:
        problem = P.make_problem(sh, device, dtype)
        base = {"op": case.op, "case": case.label, "K": case.K, "mode": mode, "shape": sh.id,
                "E": sh.E, "n": sh.n, "N": sh.N, "d": sh.d, "C": sh.C, "D": sh.D,
                "tags": tg, "dtype": str(dtype).replace("torch.", ""), **meta}
        for name in names:
            prov = provs[name]
            rec = dict(base, provider=name, status="ok", reason=None, check=None)
            reason = P.reason_not_applicable(prov, problem, case)
            if reason is None and dtype in (torch.bfloat16, torch.float16) and device == "cpu" and name == "ours":
                reason = "the CPU kernels take float32/float64"
            if reason:
                rec.update(status="n/a", reason=reason)
                records.append(rec)
                continue
            t_check = time.perf_counter()
            try:
                status, err, tol, cshape, call_s = P.check(prov, problem, case, truth_cache)
                rec["check"] = {"status": status, "rel_err": err, "tol": tol, "shape": cshape,
                                "wall_s": time.perf_counter() - t_check}
                if status != "ok":
                    rec.update(status="mismatch",
                               reason=f"differs from the float64 reference: rel err {err:.2e} > {tol:.0e}")
                    records.append(rec)
                    continue
                runnable[name + suffix] = (prov.build(problem, case), rec)
                warm[name + suffix] = call_s
                fl_of[name + suffix] = sh
            except Exception as exc:  # noqa: BLE001 - a provider that fails is recorded, not fatal
                msg = str(exc).splitlines()[0][:200] if str(exc) else ""
                rec.update(status="error", reason=f"{type(exc).__name__}: {msg}")
                records.append(rec)
                if device == "cuda":
                    torch.cuda.empty_cache()
            finally:
                check_s += time.perf_counter() - t_check
    fns = {key: (lambda f=fn: f()) for key, (fn, rec) in runnable.items()}
    t_timing = time.perf_counter()
    try:
        samples = measure(clock, fns, args.rounds, args.burst, warm, None if args.no_memory else peaks) if fns else {}
    except Exception as exc:  # noqa: BLE001
        samples = {}
        for key, (fn, rec) in runnable.items():
            rec.update(status="error", reason=f"timing: {type(exc).__name__}: {str(exc)[:200]}")
    timing_s = time.perf_counter() - t_timing
    for key, (fn, rec) in runnable.items():
        if key not in samples:
            records.append(rec)
            continue
        p20, p50, p80 = quantiles(samples[key])
        rec.update(p20_ms=p20 * 1e3, p50_ms=p50 * 1e3, p80_ms=p80 * 1e3, samples=len(samples[key]))
        sh = fl_of[key]
        fl = flops(case, sh)
        nbytes, bw = min_bytes(case, sh, dtype.itemsize), copy_gbps(clock, device, args.rounds, args.burst)
        rec.update(bytes=nbytes, gbps=nbytes / p50 / 1e9, copy_gbps=bw, x_bytes=p50 / (nbytes / bw / 1e9))
        if fl is not None:
            rate, gemm = gemm_gflops(clock, sh, device, dtype, args.rounds, args.burst)
            flop_s, byte_s = fl / rate / 1e9, nbytes / bw / 1e9
            rec.update(flops=fl, gflops=fl / p50 / 1e9, gemm_gflops=rate, gemm=gemm, x_floor=p50 / flop_s,
                       x_roofline=p50 / max(flop_s, byte_s), bound="flops" if flop_s >= byte_s else "bytes")
        if key in peaks:  # CUDA: taken in the first timed call
            rec.update(peak_mem_bytes=peaks[key], rss_peak_delta_bytes=None)
        elif device == "cpu" and not args.no_memory and p50 < args.memory_max_s:
            try:
                peak, rss = cpu_peak_memory(fn)
                rec.update(peak_mem_bytes=peak, rss_peak_delta_bytes=rss)
            except Exception as exc:  # noqa: BLE001
                rec.update(peak_mem_bytes=None, memory_error=f"{type(exc).__name__}: {str(exc)[:120]}")
        records.append(rec)
    ours_name = "kernel" if case.is_step else "ours"
    for sid in {r["shape"] for r in records}:
        group = [r for r in records if r["shape"] == sid]
        ours = next((r for r in group if r["provider"] == ours_name and "p50_ms" in r), None)
        for r in group:
            if ours and "p50_ms" in r:
                r["ratio_vs_ours"] = r["p50_ms"] / ours["p50_ms"]
    if device == "cuda":
        torch.cuda.empty_cache()
    # where a run's seconds go (checks with the float64 truth, timed rounds, the rest: memory, floors)
    job = {"wall_s": time.perf_counter() - t_job, "checks_s": check_s, "timing_s": timing_s}
    for r in records:
        r["job"] = job
    for sid in dict.fromkeys(r["shape"] for r in records):
        line = " ".join(f"{r['provider']}={r['p50_ms']:.3g}ms" if "p50_ms" in r else f"{r['provider']}={r['status']}"
                        for r in records if r["shape"] == sid)
        log(f"{case.label:26s} {sid:22s} {line}")
    log(f"{'':26s} job {job['wall_s']:.1f} s: checks {check_s:.1f} s, timing {timing_s:.1f} s")
    return records


# -------------------------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--quick", action="store_true", help="short subset (2 DomainBed shapes, 1 large head)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--dtype", default=None,
                    help="float32 | bfloat16 (comma list allowed); default float32, on CUDA float32,bfloat16 "
                         "(bf16 only at the large head with --quick)")
    ap.add_argument("--only", default=None, help="comma list of cases (op names) to run")
    ap.add_argument("--providers", default=None,
                    help="comma list of providers to check and time (ours, closed_form, autograd, ...; a step's "
                         "kernel, kernel_gram, ...), e.g. the targets' only on a short GPU lease")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 5; quick 3)")
    ap.add_argument("--burst", type=float, default=None, help="seconds of calls per provider per round")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-max-s", type=float, default=5.0,
                    help="CPU: skip the memory pass (an extra call) for calls slower than this")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny heads: tests the harness in seconds (numbers meaningless)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's choice; 1 is steadier on a shared, loaded machine)")
    ap.add_argument("--only-tags", default=None,
                    help="comma list of job sets to run: domainbed, large, scaling-C, scaling-N, scaling-K, scaling-E")
    ap.add_argument("--only-shapes", default=None,
                    help="comma list of shape ids to run (as in the tables, e.g. E5xn32_d512_C65)")
    ap.add_argument("--heads", default=None,
                    help="comma list of heads to run instead of the planned shapes, as shape ids (E3xn32_d512_C65): "
                         "every case of --only (default all) at each; their table is 'chosen heads'")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="start no new (case, shape) job after this many seconds; the rest is recorded as not run")
    ap.add_argument("--report", metavar="JSON", default=None,
                    help="rebuild the markdown and plots of an earlier run from its JSON, run nothing")
    args = ap.parse_args(argv)
    if args.report:
        with open(args.report) as f:
            data = json.load(f)
        stem = args.report[:-len(".json")] if args.report.endswith(".json") else args.report
        pngs = [] if args.no_plots else plots(data["records"], stem, print)
        md = report(data["meta"], data["records"], pngs, quick="_quick" in os.path.basename(stem))
        with open(stem + ".md", "w") as f:
            f.write(md)
        print(md)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.burst = args.burst or (0.04 if args.quick else 0.08)
    dtypes = args.dtype or ("float32,bfloat16" if args.device == "cuda" else "float32")
    dtypes = [DTYPES[x.strip()] for x in dtypes.split(",")]
    os.makedirs(args.out, exist_ok=True)
    only = None if args.only is None else set(args.only.split(","))
    if args.providers is not None:
        args.providers = args.providers.split(",")
        unknown = set(args.providers) - set(P.PROVIDERS) - set(P.STEP_PROVIDERS)
        if unknown:
            ap.error(f"--providers: no provider {', '.join(sorted(unknown))}")
    only_tags = None if args.only_tags is None else set(args.only_tags.split(","))
    only_shapes = None if args.only_shapes is None else set(args.only_shapes.split(","))
    try:
        heads = None if args.heads is None else [P.Shape.from_id(x, "heads") for x in args.heads.split(",")]
    except ValueError as e:
        ap.error(f"--heads: {e}")

    t_start = time.time()
    now = dt.datetime.now(dt.timezone.utc)
    command = " ".join([os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else "python"] +
                       [os.path.relpath(sys.argv[0])] + sys.argv[1:])
    meta = {"device": args.device, **device_meta(args.device), "torch": torch.__version__, "git_sha": git_sha(),
            "command": command, "timestamp": now.isoformat(timespec="seconds"),
            "env": {k: v for k, v in sorted(os.environ.items()) if k.startswith("HESSALIGN_")}}
    stem = os.path.join(args.out, f"{now:%Y-%m-%d}_{args.device}" + ("_quick" if args.quick else "") +
                        ("_smoke" if args.smoke else "") +
                        ("" if only_tags is None else "_" + "_".join(sorted(only_tags))) +
                        ("" if only_shapes is None else "_shapes") + ("" if heads is None else "_heads") +
                        ("" if not args.only else "_" + "_".join(sorted(args.only.split(",")))) +
                        ("" if dtypes == [torch.float32] or (args.dtype is None) else "_" + "_".join(
                            str(d).replace("torch.", "") for d in dtypes)))
    clock = Clock(args.device)
    load0 = os.getloadavg()

    def log(msg):
        print(msg, flush=True)

    log(f"# {command}\n# {meta['device_name']}, torch {meta['torch']}, git {meta['git_sha']}, load {load0}")
    torch.manual_seed(0)
    records, not_run = [], []
    meta.update(rounds=args.rounds, burst_s=args.burst, threads=torch.get_num_threads(), budget_s=args.budget_s,
                memory_method=("cuda max_memory_allocated - memory_allocated before the call" if args.device == "cuda"
                               else "torch CPU allocator peak from torch.profiler memory events; "
                                    "rss_peak_delta_bytes: VmHWM growth after clear_refs + malloc_trim"))

    def save():
        """Rewritten after every job, so a run cut short (time limit, lost machine) keeps what it measured."""
        meta.update(wall_s=time.time() - t_start, loadavg_start=load0, loadavg_end=os.getloadavg(),
                    jobs_not_run=not_run)
        with open(stem + ".json.tmp", "w") as f:
            json.dump({"meta": meta, "records": records}, f, indent=1, default=str)
        os.replace(stem + ".json.tmp", stem + ".json")

    for dtype in dtypes:
        jobs = plan(args.device, args.quick, dtype, args.smoke) if heads is None else [
            (c, s, None, {"heads"}) for s in heads for c in every_case()]
        if only:
            jobs = [j for j in jobs if j[0].op in only]
        if only_tags:
            jobs = [j for j in jobs if j[3] & only_tags]
        if only_shapes:
            jobs = [j for j in jobs if j[1].id in only_shapes]
        log(f"# {str(dtype)}: {len(jobs)} (case, shape) jobs")
        for job in jobs:
            if args.budget_s is not None and time.time() - t_start > args.budget_s:
                not_run.append(f"{job[0].label} {job[1].id} {str(dtype).replace('torch.', '')}")
                continue
            records += run_job(job, args, clock, dtype, meta, log)
            save()
    if not_run:
        log(f"# budget of {args.budget_s:.0f} s spent: {len(not_run)} jobs not run (listed in the JSON meta)")
    save()
    wall = meta["wall_s"]

    pngs = [] if args.no_plots else plots(records, stem, log)
    md = report(meta, records, pngs, quick=args.quick)
    with open(stem + ".md", "w") as f:
        f.write(md)
    print(md)
    log(f"\nwrote {stem}.json, {stem}.md" + "".join(f", {p}" for p in pngs) + f" in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
