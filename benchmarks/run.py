"""Benchmark every op and penalty step against its peers; print the ratios, write JSON and plots.

Usage (from the repository root)::

    python benchmarks/run.py                        # CPU, full (DomainBed + reduced large + scaling)
    python benchmarks/run.py --quick                # short subset (what scripts/gpu_check.sh runs)
    python benchmarks/run.py --device cuda --quick --out "$OUT"
    python benchmarks/run.py --dtype bfloat16 --device cuda

For each (case, shape, dtype) it

1. checks every applicable provider (benchmarks/providers.py) against the float64 truth of
   ``hessalign_ext.reference`` (at the benchmark shape when the reference affords it, else at
   a reduced head with the same domains; Hutchinson providers get the op's own probes), and
   skips, with the reason recorded, any provider that disagrees or does not apply;
2. times the providers interleaved, round after round (so a change of machine load hits all
   of them alike): warm-up, then single calls timed with ``time.perf_counter`` (CPU) or CUDA
   events (GPU); reports the median, p20 and p80 of the single-call times;
3. measures peak memory of one extra call: on CUDA ``max_memory_allocated`` minus the memory
   allocated before the call; on CPU the peak of the bytes held by torch's CPU allocator
   during the call, from the profiler's memory events (``torch.profiler``, ``profile_memory``:
   allocations and frees of tensors, the CPU analogue of ``max_memory_allocated``), and, as a
   second figure, the process's peak RSS growth (``VmHWM`` after resetting it through
   ``/proc/self/clear_refs``, after ``malloc_trim``; pages glibc kept from earlier calls are
   not counted, so it can undercount);
4. counts each op's FLOPs (DESIGN.md §4: every GEMM is N·D·C multiply-adds, 2·N·D·C FLOPs)
   and reports GFLOP/s and the multiple of the floor, i.e. the time of those GEMMs at the rate
   of a ``torch.mm`` of (N, d) by (d, C) (the caller's aligned layout) measured in the same run.

Outputs in ``--out``: ``<date>_<device>[_quick][_<dtype>].json`` (a ``meta`` block and one
record per op/case, provider, mode, shape and dtype), the same name ``.md`` (the command,
date, device, versions, the ratio tables and the targets of issue 4), and
``..._scaling_{C,N,K,E}.png`` plots (matplotlib, Agg; skipped if matplotlib is missing).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections import defaultdict

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the CPU memory pass uses the profiler: keep it quiet

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import providers as P  # noqa: E402

warnings.filterwarnings("ignore", message="Full backward hook is firing")  # BackPACK, inputs without grad
warnings.filterwarnings("ignore", category=FutureWarning)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}

# --------------------------------------------------------------------------- what runs


def domainbed_shapes(quick: bool):
    if quick:
        return [P.Shape(3, 32, 2048, C, "domainbed") for C in (7, 345)]
    return [P.Shape(E, 32, d, C, "domainbed") for E in (3, 5) for d in (512, 2048) for C in (2, 7, 65, 345)]


def large_shapes(device: str, quick: bool):
    if device == "cuda":
        if quick:
            return [P.Shape(4, 2048, 4096, 32768, "large")]
        return [P.Shape(4, 2048, 4096, C, "large") for C in (1024, 32768)] + [P.Shape(4, 512, 4096, 32768, "large")]
    # CPU: a reduced large head (N = 1024, d = 1024, C = 8192), the GPU's is out of reach here.
    return [P.Shape(4, 256, 1024, 8192, "large")]


def op_cases(Ks):
    out = [P.Case(op) for op in P.OPS if not op.startswith("hutchinson")]
    out += [P.Case(op, K) for op in ("hutchinson_diag", "hutchinson_trace") for K in Ks]
    return out


STEP_CASES = [P.Case("hgp_step"), P.Case("hutchinson_step", 300), P.Case("hutchinson_exact_step")]
SCALING_OPS = ("head_hvp", "head_hessian_diag")


def every_case():
    """Every op (the Hutchinson ops at K = 1, 10, 300) and every penalty step."""
    return op_cases((1, 10, 300)) + STEP_CASES


def plan(device: str, quick: bool, dtype: torch.dtype, smoke: bool = False):
    """Jobs: (case, shape, provider names or None for all, tags). Duplicates are merged."""
    jobs = []
    low_precision = dtype in (torch.bfloat16, torch.float16)
    if not (quick and low_precision and device == "cuda"):
        for s in domainbed_shapes(quick):
            jobs += [(c, s, None, {"domainbed"}) for c in every_case()]
    for s in large_shapes(device, quick):
        cases = op_cases((1,) if quick else (1, 10)) + [P.Case("hgp_step")]
        if quick and low_precision:
            cases = [P.Case("head_hvp")]
        jobs += [(c, s, None, {"large"}) for c in cases]
    if not quick:
        base = dict(d=2048, C=65)
        if device == "cuda":
            Cs, ns, Es = (2, 7, 65, 345, 1024, 4096, 32768), (8, 32, 128, 512, 2048, 8192), (1, 2, 4, 8, 16, 32)
        else:
            Cs, ns, Es = (2, 7, 65, 345, 1024, 4096), (8, 32, 128, 512, 2048), (1, 2, 4, 8, 16)
        for C in Cs:
            jobs += [(P.Case(op), P.Shape(3, 32, 2048, C, "scaling-C"), None, {"scaling-C"}) for op in SCALING_OPS]
        for n in ns:
            jobs += [(P.Case(op), P.Shape(3, n, base["d"], base["C"], "scaling-N"), None, {"scaling-N"})
                     for op in SCALING_OPS]
        for K in (1, 3, 10, 30, 100, 300):
            jobs += [(P.Case(op, K), P.Shape(3, 32, base["d"], base["C"], "scaling-K"), None, {"scaling-K"})
                     for op in ("hutchinson_diag", "hutchinson_trace")]
        for E in Es:  # each job also times one domain of E·32 rows (run_job)
            jobs += [(P.Case(op), P.Shape(E, 32, base["d"], base["C"], "scaling-E"), ["ours", "closed_form"],
                      {"scaling-E"} | ({"scaling-E1"} if E == 1 else set())) for op in SCALING_OPS]
    elif device == "cuda":  # the fusion target at the large head: E domains against one domain of E·n rows
        s = large_shapes(device, quick)[0]
        jobs.append((P.Case("head_hvp"), s, ["ours"], {"scaling-E"}))
    if smoke:  # the harness itself on tiny heads (seconds): every code path, meaningless numbers
        jobs = [(P.Case(c.op, None if c.K is None else min(c.K, 10)),
                 P.Shape(s.E, max(2, s.n // 8), max(4, s.d // 64), max(2, s.C // 8), s.tag), pv, tg)
                for c, s, pv, tg in jobs]
    merged = {}
    for case, shape, provs, tags in jobs:
        key = (case.label, shape.E, shape.n, shape.d, shape.C)
        if key not in merged:
            merged[key] = [case, shape, None if provs is None else list(provs), set(tags)]
            continue
        m = merged[key]
        m[3] |= tags
        if m[2] is not None:
            m[2] = None if provs is None else sorted(set(m[2]) | set(provs))
    return [tuple(v) for v in merged.values()]


# ----------------------------------------------------------------------------- FLOPs


def gemm_count(case: P.Case):
    """GEMMs of N·D·C each (DESIGN.md §4); None where the cost is not GEMM-shaped."""
    return {"domain_losses": 1, "head_grad": 2, "head_hvp": 3, "head_hessian_diag": 2, "head_hessian_trace": 1,
            "hutchinson_diag": None if case.K is None else 1 + 2 * case.K,
            "hutchinson_trace": None if case.K is None else 1 + case.K}.get(case.op)


def flops(case: P.Case, s: P.Shape):
    if case.op == "head_hessian_inner":  # logits; Gram Z̃Z̃ᵀ; P Pᵀ, P (P⊙P)ᵀ, (P⊙P) Pᵀ over all N² pairs
        return 2 * (s.N * s.D * s.C + s.N * s.N * s.D + 3 * s.N * s.N * s.C)
    g = gemm_count(case)
    return None if g is None else 2 * g * s.N * s.D * s.C


# ---------------------------------------------------------------------------- timing


class Clock:
    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def once(self, fn) -> float:
        """Seconds of one call (CUDA events on the GPU)."""
        if self.cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            return a.elapsed_time(b) / 1e3
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0


def measure(clock: Clock, fns: dict, rounds: int, burst_s: float):
    """Interleaved timing of several callables: per-call samples for each (seconds)."""
    est = {}
    for name, fn in fns.items():  # warm-up: at least one call, then to ~burst_s
        clock.sync()
        t, calls = clock.once(fn), 1
        while t * calls < burst_s and calls < 3 and t < 1.0:
            t = clock.once(fn)
            calls += 1
        est[name] = t
    samples = defaultdict(list)
    names = list(fns)
    for r in range(rounds):
        # each round starts one provider later: a provider's time depends on what ran before it
        # (at 1 ms HGP steps on the CPU, the same code measured 1.41 ms first in every round and
        # 1.19 ms fourth), and rotating gives every provider every place
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, t = fns[name], est[name]
            my_rounds = rounds if t < 1.0 else (3 if t < 10.0 else 1)
            if r >= my_rounds:
                continue
            burst = max(1, min(50, int(burst_s / max(t, 1e-6))))
            for _ in range(burst):
                samples[name].append(clock.once(fn))
    return samples


def quantiles(xs):
    xs = sorted(xs)

    def q(f):
        if len(xs) == 1:
            return xs[0]
        pos = f * (len(xs) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
    return q(0.2), statistics.median(xs), q(0.8)


# ----------------------------------------------------------------------------- memory


_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:
            _LIBC = False
    return _LIBC


def _status_kb(field: str):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@contextlib.contextmanager
def _quiet_stderr():
    """Kineto prints start/stop lines on fd 2 for every profile: silence them."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory(device: str, fn):
    """(peak bytes above the starting allocation, peak RSS growth in bytes or None) of one call."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base, None
    libc = _libc()
    if libc:
        libc.malloc_trim(0)
    rss = None
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        base_rss = _status_kb("VmRSS")
        fn()
        rss = (_status_kb("VmHWM") - base_rss) * 1024
    except OSError:
        pass
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    held = peak = 0
    for _, nb in events:
        held += nb
        peak = max(peak, held)
    return peak, rss


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
    device = args.device
    truth_cache = {}
    mode = "step" if case.is_step else "forward"
    provs = P.providers_for(case)
    names = [n for n in provs if only is None or n in only]
    variants = [("", shape, sorted(tags))]
    if "scaling-E" in tags and shape.E > 1:
        variants.append(("@1domain", P.Shape(1, shape.N, shape.d, shape.C, "scaling-E1"), ["scaling-E1"]))
    records, runnable, fl_of = [], {}, {}
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
            try:
                status, err, tol, cshape = P.check(prov, problem, case, truth_cache)
                rec["check"] = {"status": status, "rel_err": err, "tol": tol, "shape": cshape}
                if status != "ok":
                    rec.update(status="mismatch",
                               reason=f"differs from the float64 reference: rel err {err:.2e} > {tol:.0e}")
                    records.append(rec)
                    continue
                runnable[name + suffix] = (prov.build(problem, case), rec)
                fl_of[name + suffix] = sh
            except Exception as exc:  # noqa: BLE001 - a provider that fails is recorded, not fatal
                msg = str(exc).splitlines()[0][:200] if str(exc) else ""
                rec.update(status="error", reason=f"{type(exc).__name__}: {msg}")
                records.append(rec)
                if device == "cuda":
                    torch.cuda.empty_cache()
    fns = {key: (lambda f=fn: f()) for key, (fn, rec) in runnable.items()}
    try:
        samples = measure(clock, fns, args.rounds, args.burst) if fns else {}
    except Exception as exc:  # noqa: BLE001
        samples = {}
        for key, (fn, rec) in runnable.items():
            rec.update(status="error", reason=f"timing: {type(exc).__name__}: {str(exc)[:200]}")
    for key, (fn, rec) in runnable.items():
        if key not in samples:
            records.append(rec)
            continue
        p20, p50, p80 = quantiles(samples[key])
        rec.update(p20_ms=p20 * 1e3, p50_ms=p50 * 1e3, p80_ms=p80 * 1e3, samples=len(samples[key]))
        sh = fl_of[key]
        fl = flops(case, sh)
        if fl is not None:
            rate, gemm = gemm_gflops(clock, sh, device, dtype, args)
            rec.update(flops=fl, gflops=fl / p50 / 1e9, gemm_gflops=rate, gemm=gemm, x_floor=rate / (fl / p50 / 1e9))
        if not args.no_memory and p50 < args.memory_max_s:
            try:
                peak, rss = peak_memory(device, fn)
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
    for sid in dict.fromkeys(r["shape"] for r in records):
        line = " ".join(f"{r['provider']}={r['p50_ms']:.3g}ms" if "p50_ms" in r else f"{r['provider']}={r['status']}"
                        for r in records if r["shape"] == sid)
        log(f"{case.label:26s} {sid:22s} {line}")
    if device == "cuda":
        torch.cuda.empty_cache()
    return records


_GEMM_CACHE = {}


def gemm_gflops(clock, shape: P.Shape, device, dtype, args):
    """(GFLOP/s, which GEMM) of the fastest GEMM torch ships for (N, d) by (d, C), the layout of
    the caller's features and weight: the rate the floor is taken at (same run). torch.mm; on
    the CPU in float32 also oneDNN's matmul (torch.ops.mkldnn._linear_pointwise), which the ops
    use where it is faster (csrc/cpu/onednn_gemm.cpp): on CPUs where MKL's sgemm runs 256-bit
    kernels it is up to 2x torch.mm's rate. Not (N, D = d + 1): rows of d + 1 elements are
    misaligned, and on the H200 run of 2026-11-26 such a bf16 mm ran at 130 TFLOP/s, a fraction
    of the aligned rate, which made a floor taken at it flatter the op against its peers."""
    key = (shape.N, shape.d, shape.C, dtype)
    if key not in _GEMM_CACHE:
        a = torch.randn(shape.N, shape.d, device=device).to(dtype)
        b = torch.randn(shape.C, shape.d, device=device).to(dtype)
        fns = {"torch.mm": lambda: torch.mm(a, b.T)}
        if device == "cpu" and dtype == torch.float32 and torch.backends.mkldnn.is_available():
            fns["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
        s = measure(clock, fns, args.rounds, args.burst)
        rates = {k: 2 * shape.N * shape.d * shape.C / statistics.median(v) / 1e9 for k, v in s.items()}
        best = max(rates, key=rates.get)
        _GEMM_CACHE[key] = (rates[best], best)
    return _GEMM_CACHE[key]


# ------------------------------------------------------------------------------ report


def fmt_ms(ms):
    return f"{ms:.3g}" if ms >= 1 else f"{ms:.3f}"


def ratio_tables(records, provider_order, title_of=lambda c: c):
    """Markdown: per case, rows = shapes, columns = ours ms then each provider's time / ours."""
    out = []
    by_case = defaultdict(list)
    for r in records:
        by_case[r["case"]].append(r)
    for case, recs in by_case.items():
        step = recs[0]["mode"] == "step"
        order = P.STEP_PROVIDER_ORDER if step else provider_order
        ours = order[0]
        others = [p for p in order[1:] if any(r["provider"] == p for r in recs)]
        out.append(f"\n### {title_of(case)}\n")
        out.append("| shape (E×n, d, C) | " + ours + " ms | " + " | ".join(f"{p} / {ours}" for p in others) + " |")
        out.append("|---|---:|" + "---:|" * len(others))
        rows = defaultdict(dict)
        for r in recs:
            rows[(r["E"], r["n"], r["d"], r["C"])][r["provider"]] = r
        for (E, n, d, C), cell in sorted(rows.items()):
            o = cell.get(ours)
            first = fmt_ms(o["p50_ms"]) if o and "p50_ms" in o else (o["status"] if o else "—")
            cols = []
            for p in others:
                r = cell.get(p)
                if r is None:
                    cols.append("—")
                elif "ratio_vs_ours" in r:
                    cols.append(f"{r['ratio_vs_ours']:.2f}× ({fmt_ms(r['p50_ms'])} ms)")
                else:
                    cols.append(r["status"])
            out.append(f"| {E}×{n}, {d}, {C} | {first} | " + " | ".join(cols) + " |")
    return "\n".join(out)


def series_tables(records):
    """Markdown for the scaling series: time against C, n, K (ours ms and each provider / ours)
    and the fusion series (E domains of n rows against one domain of E·n rows)."""
    out = []
    spec = [("scaling-C", "C", SCALING_OPS), ("scaling-N", "n", SCALING_OPS),
            ("scaling-K", "K", ("hutchinson_diag", "hutchinson_trace"))]
    for tag, key, ops in spec:
        for op in ops:
            recs = [r for r in records if tag in r["tags"] and r["op"] == op]
            if not recs:
                continue
            r0 = recs[0]
            fixed = ", ".join(f"{k}={r0[k]}" for k in ("E", "n", "d", "C") if k != key)
            others = [p for p in P.OP_PROVIDER_ORDER[1:] if any(r["provider"] == p and "p50_ms" in r for r in recs)]
            out += [f"\n### {op} against {key} ({fixed})\n", f"| {key} | ours ms | " +
                    " | ".join(f"{p} / ours" for p in others) + " |", "|---:|---:|" + "---:|" * len(others)]
            rows = defaultdict(dict)
            for r in recs:
                rows[r[key]][r["provider"]] = r
            for v, cell in sorted(rows.items()):
                o = cell.get("ours")
                cols = [f"{cell[p]['ratio_vs_ours']:.2f}×" if p in cell and "ratio_vs_ours" in cell[p]
                        else (cell[p]["status"] if p in cell else "—") for p in others]
                first = fmt_ms(o['p50_ms']) if o and 'p50_ms' in o else '—'
                out.append(f"| {v} | {first} | " + " | ".join(cols) + " |")
    multi = {(r["op"], r["provider"], r["N"]): r for r in records if "scaling-E" in r["tags"] and "p50_ms" in r}
    one = {(r["op"], r["provider"], r["N"]): r for r in records if "scaling-E1" in r["tags"] and "p50_ms" in r}
    for op in SCALING_OPS:
        keys = sorted(k for k in multi if k[0] == op and k[1] == "ours" and k in one)
        if not keys:
            continue
        r0 = multi[keys[0]]
        out += [f"\n### {op}: E domains of n={r0['n']} rows against one domain of E·n rows "
                f"(d={r0['d']}, C={r0['C']})\n",
                "| E | ours, E domains ms | ours, 1 domain ms | ratio | closed_form, E domains ms "
                "| closed_form, 1 domain ms |",
                "|---:|---:|---:|---:|---:|---:|"]
        for k in keys:
            m, o = multi[k], one[k]
            cm, co = multi.get((op, "closed_form", k[2])), one.get((op, "closed_form", k[2]))
            out.append(f"| {m['E']} | {fmt_ms(m['p50_ms'])} | {fmt_ms(o['p50_ms'])} | "
                       f"{m['p50_ms'] / o['p50_ms']:.2f} | {fmt_ms(cm['p50_ms']) if cm else '—'} | "
                       f"{fmt_ms(co['p50_ms']) if co else '—'} |")
    return "\n".join(out)


def targets(records, device):
    """Issue 4's targets, evaluated on these records. Returns markdown lines."""
    lines = []
    db = [r for r in records if "domainbed" in r["tags"] and "ratio_vs_ours" in r]

    def ratios(case_pred, provider):
        return [(r["case"], r["shape"], r["ratio_vs_ours"]) for r in db if case_pred(r) and r["provider"] == provider]

    def verdict(name, items, bound, per_case=False):
        if not items:
            lines.append(f"- {name}: not measured")
            return
        worst = min(items, key=lambda x: x[2])
        miss = [x for x in items if x[2] < bound]
        status = "MET" if not miss else f"MISSED at {len(miss)}/{len(items)} shapes"
        lines.append(f"- {name}: **{status}**; worst {worst[2]:.2f}× ({worst[0]}, {worst[1]})")
        if per_case:  # one line per case: how many shapes meet it, the worst and the best ratio
            by = defaultdict(list)
            for c, s, x in items:
                by[c].append((x, s))
            for c, xs in by.items():
                lo, hi = min(xs), max(xs)
                met = sum(x >= bound for x, _ in xs)
                lines.append(f"  - {c}: {met}/{len(xs)} met; {lo[0]:.2f}× ({lo[1]}) to {hi[0]:.2f}× ({hi[1]})")
        else:
            for c, s, x in sorted(miss, key=lambda x: x[2]):
                lines.append(f"  - {c} at {s}: {x:.2f}×")

    is_op = lambda r: r["mode"] == "forward"  # noqa: E731
    gpu = device == "cuda"
    verdict(f"every op no slower than closed_form{' (GPU: 2× faster)' if gpu else ''} (closed_form / ours ≥ "
            f"{2 if gpu else 1})", ratios(is_op, "closed_form"), 2.0 if gpu else 1.0, per_case=True)
    verdict(f"every op ≥ {5 if gpu else 2}× faster than double-backward autograd (where autograd applies)",
            ratios(is_op, "autograd"), 5.0 if gpu else 2.0, per_case=True)
    verdict(f"HGP step ≥ {5 if gpu else 2}× faster than the autograd backend",
            ratios(lambda r: r["op"] == "hgp_step", "autograd"), 5.0 if gpu else 2.0)
    # Hutchinson exact-diagonal step (kernel) against the autograd backend with 300 probes.
    ex = {(r["shape"]): r for r in records if "domainbed" in r["tags"] and r["op"] == "hutchinson_exact_step"
          and r["provider"] == "kernel" and "p50_ms" in r}
    ag = {(r["shape"]): r for r in records if "domainbed" in r["tags"] and r["op"] == "hutchinson_step"
          and r["K"] == 300 and r["provider"] == "autograd" and "p50_ms" in r}
    items = [("hutchinson_exact_step vs autograd K=300", s, ag[s]["p50_ms"] / ex[s]["p50_ms"]) for s in ex if s in ag]
    verdict("Hutchinson step, exact diagonal (kernel) ≥ 100× faster than the autograd backend with 300 probes",
            items, 100.0)
    if gpu:
        hv = [r for r in records if "large" in r["tags"] and r["op"] == "head_hvp" and r["provider"] == "ours"
              and r["dtype"] == "bfloat16" and r.get("x_floor")]
        for r in hv:
            ok = r["x_floor"] <= 1.5
            lines.append(f"- large-head HVP, bf16, within 1.5× of its GEMMs at the measured rate: "
                         f"**{'MET' if ok else 'MISSED'}** at {r['shape']}: {r['x_floor']:.2f}× the floor "
                         f"({r['gflops']:.0f} GFLOP/s vs {r.get('gemm', 'torch.mm')} {r['gemm_gflops']:.0f})")
        if not hv:
            lines.append("- large-head HVP, bf16, within 1.5× of its GEMMs: not measured (run with bfloat16)")
    fused = {(r["op"], r["N"], r["d"], r["C"], r["dtype"]): r for r in records
             if "scaling-E" in r["tags"] and r["provider"] == "ours" and "p50_ms" in r and r["E"] > 1}
    one = {(r["op"], r["N"], r["d"], r["C"], r["dtype"]): r for r in records
           if "scaling-E1" in r["tags"] and r["provider"] == "ours" and "p50_ms" in r}
    fx = [(k, fused[k]["E"], fused[k]["p50_ms"] / one[k]["p50_ms"]) for k in fused if k in one]
    if fx:
        worst = max(fx, key=lambda x: x[2])
        lines.append(f"- fusion: E domains of n rows cost ≤ 1.2× one domain of E·n rows: "
                     f"**{'MET' if worst[2] <= 1.2 else 'MISSED'}**; worst {worst[2]:.2f}× "
                     f"({worst[0][0]}, E={worst[1]}, N={worst[0][1]}, d={worst[0][2]}, C={worst[0][3]}, {worst[0][4]})")
    return lines


def floor_table(records):
    rows = [r for r in records if r["provider"] == "ours" and r.get("x_floor") and
            ("large" in r["tags"] or "domainbed" in r["tags"])]
    if not rows:
        return ""
    out = ["\n### ours against the GEMM floor (DESIGN.md §4)\n",
           "| case | shape | ours ms | GFLOP/s | GEMM GFLOP/s | × floor | closed_form × floor |",
           "|---|---|---:|---:|---:|---:|---:|"]
    cf = {(r["case"], r["shape"]): r for r in records if r["provider"] == "closed_form" and r.get("x_floor")}
    for r in rows:
        c = cf.get((r["case"], r["shape"]))
        cfloor = f"{c['x_floor']:.2f}" if c else "—"
        out.append(f"| {r['case']} | {r['shape']} | {fmt_ms(r['p50_ms'])} | {r['gflops']:.1f} | "
                   f"{r['gemm_gflops']:.1f} | {r['x_floor']:.2f} | {cfloor} |")
    return "\n".join(out)


def skipped_table(records):
    seen = {}
    for r in records:
        if r["status"] != "ok":
            seen.setdefault((r["provider"], r["case"].split("[")[0], r["status"], r["reason"]), []).append(r["shape"])
    if not seen:
        return ""
    out = ["\n### providers skipped (reason recorded in the JSON)\n", "| provider | case | status | reason | shapes |",
           "|---|---|---|---|---:|"]
    for (p, c, st, reason), shapes in sorted(seen.items()):
        out.append(f"| {p} | {c} | {st} | {reason} | {len(shapes)} |")
    return "\n".join(out)


def plots(records, stem, log):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plots")
        return []
    written = []
    dtype0 = records[0]["dtype"] if records else "float32"
    ok = [r for r in records if "p50_ms" in r and r["mode"] == "forward" and r["dtype"] == dtype0]

    def series_plot(axis, tag, ops, title, select, xkey, label_x):
        recs = [r for r in ok if tag in r["tags"] and r["op"] in ops and select(r)]
        if not recs:
            return
        fig, axes = plt.subplots(1, len(ops), figsize=(5.5 * len(ops), 4.2), squeeze=False)
        for ax, op in zip(axes[0], ops):
            by = defaultdict(list)
            for r in recs:
                if r["op"] == op:
                    by[r["provider"]].append((xkey(r), r["p50_ms"], r["p20_ms"], r["p80_ms"]))
            for prov in P.OP_PROVIDER_ORDER:
                if prov not in by:
                    continue
                pts = sorted(by[prov])
                xs, ys = [p[0] for p in pts], [p[1] for p in pts]
                err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=2, label=prov)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(label_x)
            ax.set_ylabel("median time per call (ms)")
            ax.set_title(op)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(title)
        fig.tight_layout()
        path = f"{stem}_scaling_{axis}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    dev = records[0]["device_name"] if records else ""
    def fixed(tag, keys):
        r = next((r for r in ok if tag in r["tags"]), None)
        return ", ".join(f"{k}={r[k]}" for k in keys) if r else ""

    series_plot("C", "scaling-C", SCALING_OPS, f"time vs C ({fixed('scaling-C', ('E', 'n', 'd'))}, {dtype0}) — {dev}",
                lambda r: True, lambda r: r["C"], "classes C")
    series_plot("N", "scaling-N", SCALING_OPS, f"time vs N ({fixed('scaling-N', ('E', 'd', 'C'))}, {dtype0}) — {dev}",
                lambda r: True, lambda r: r["N"], "rows N = E·n")
    series_plot("K", "scaling-K", ("hutchinson_diag", "hutchinson_trace"),
                f"time vs probes K ({fixed('scaling-K', ('E', 'n', 'd', 'C'))}, {dtype0}) — {dev}",
                lambda r: True, lambda r: r["K"], "probes K")
    # E domains of n rows against one domain of E·n rows
    recs = [r for r in ok if ("scaling-E" in r["tags"] or "scaling-E1" in r["tags"]) and r["op"] in SCALING_OPS]
    multi = [r for r in recs if "scaling-E" in r["tags"]]
    if multi:
        n0 = multi[0]["n"]
        fig, axes = plt.subplots(1, len(SCALING_OPS), figsize=(11, 4.2), squeeze=False)
        for ax, op in zip(axes[0], SCALING_OPS):
            for prov in ("ours", "closed_form"):
                for tag, style, lab in (("scaling-E", "-o", f"E domains of n={n0} rows"),
                                        ("scaling-E1", "--s", f"1 domain of E·{n0} rows")):
                    pts = sorted((r["N"] // n0, r["p50_ms"]) for r in recs if r["op"] == op and r["provider"] == prov
                                 and tag in r["tags"])
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{prov}: {lab}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(f"E (total rows E·{n0})")
            ax.set_ylabel("median time per call (ms)")
            ax.set_title(op)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"fusion across domains: d={multi[0]['d']}, C={multi[0]['C']}, {dtype0} — {dev}")
        fig.tight_layout()
        path = f"{stem}_scaling_E.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


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
    ap.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 5; quick 3)")
    ap.add_argument("--burst", type=float, default=None, help="seconds of calls per provider per round")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--memory-max-s", type=float, default=5.0, help="skip the memory pass for calls slower than this")
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


def memory_table(records):
    """Peak memory of every provider at the largest DomainBed head and the large head."""
    out = []
    for tag in ("domainbed", "large"):
        recs = [r for r in records if tag in r["tags"] and r.get("peak_mem_bytes") is not None]
        if not recs:
            continue
        big = max(recs, key=lambda r: (r["N"] * r["D"] * r["C"]))["shape"]
        recs = [r for r in recs if r["shape"] == big]
        provs = [p for p in P.OP_PROVIDER_ORDER + P.STEP_PROVIDER_ORDER if any(r["provider"] == p for r in recs)]
        provs = list(dict.fromkeys(provs))
        how = "allocator peak" if recs[0]["device"] == "cuda" else "CPU allocator peak; RSS growth in parentheses"
        out += [f"\n### peak memory (MiB) at {big} ({how})\n",
                "| case | " + " | ".join(provs) + " |", "|---|" + "---:|" * len(provs)]
        by = defaultdict(dict)
        for r in recs:
            by[r["case"]][r["provider"]] = r
        for case, cell in by.items():
            cols = []
            for p in provs:
                r = cell.get(p)
                if r is None:
                    cols.append("—")
                    continue
                txt = f"{r['peak_mem_bytes'] / 2**20:.1f}"
                if r.get("rss_peak_delta_bytes") is not None:
                    txt += f" ({r['rss_peak_delta_bytes'] / 2**20:.0f})"
                cols.append(txt)
            out.append(f"| {case} | " + " | ".join(cols) + " |")
    if out:
        out.append("\n(not measured for calls slower than 5 s; see the JSON)")
    return "\n".join(out)


def report(meta, records, pngs, quick=False):
    """The markdown report of a run (also rebuilt from its JSON by ``--report``)."""
    dev = meta["device"]
    md = [f"# hessalign_ext benchmarks: {dev}{' (quick)' if quick else ''}", "",
          f"- command: `{' '.join([*(f'{k}={v}' for k, v in meta.get('env', {}).items()), meta['command']])}`",
          f"- date: {meta['timestamp']}", f"- device: {meta['device_name']}",
          f"- torch {meta['torch']}" + (f", CUDA {meta['cuda']}" if meta.get("cuda") else ""),
          f"- git: {meta['git_sha']}",
          f"- load average (1, 5, 15 min) at start {tuple(round(x, 2) for x in meta['loadavg_start'])}, "
          f"at end {tuple(round(x, 2) for x in meta['loadavg_end'])}; torch threads {meta['threads']}",
          f"- wall time: {meta['wall_s']:.0f} s; timing: {meta['rounds']} interleaved rounds, median (p20/p80 in the "
          f"JSON) of single calls; {'CUDA events' if dev == 'cuda' else 'time.perf_counter'}",
          f"- peak memory: {meta['memory_method']}",
          "- ratios: each provider's median time / ours (kernel backend for penalty steps), same run; "
          ">1 means ours is faster. `n/a`: the provider does not apply (reason in the JSON and below); "
          "`mismatch`: disagreed with the float64 reference and was not timed.", ""]
    if meta.get("jobs_not_run"):
        md += [f"- **cut short**: the time budget ({meta['budget_s']:.0f} s) ran out before "
               f"{len(meta['jobs_not_run'])} jobs (listed in the JSON meta, `jobs_not_run`)", ""]
    md += ["## Targets (issue 4)", ""] + targets(records, dev)
    for ds in dict.fromkeys(r["dtype"] for r in records):
        recs = [r for r in records if r["dtype"] == ds]
        for tag, title in (("domainbed", "DomainBed heads"), ("large", "large heads"), ("heads", "chosen heads")):
            sub = [r for r in recs if tag in r["tags"]]
            if sub:
                md += ["", f"## {title}, {ds}: time / ours", ratio_tables(sub, P.OP_PROVIDER_ORDER)]
        md.append(floor_table(recs))
        md.append(memory_table(recs))
        sc = series_tables(recs)
        if sc:
            md += ["", f"## scaling, {ds} (plots: {', '.join(os.path.basename(p) for p in pngs) or 'none'})", sc]
    md.append(skipped_table(records))
    return "\n".join(md) + "\n"


if __name__ == "__main__":
    sys.exit(main())
