"""How benchmarks/run.py measures: single calls timed interleaved across providers (CUDA events
on the GPU), their quantiles, the peak memory of one call, and the GEMM rate the FLOP floor is
taken at."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import os
import statistics
import sys
import time
from collections import defaultdict

import torch

import providers as P

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


FAR_RATIO, FAR_MIN_S = 20.0, 0.05


def measure(clock: Clock, fns: dict, rounds: int, burst_s: float, warm=None, peaks=None):
    """Interleaved timing of several callables: per-call samples for each (seconds).

    ``warm``: {name: seconds of a call just made at the same inputs} (the reference check's):
    a provider slower than a burst needs no other warm-up call. ``peaks``: a dict that, on CUDA,
    receives each provider's peak memory in its first timed call (``track_peak``), so the
    memory costs no extra call (a slow reference's extra call was as long as a sample)."""
    warm = warm or {}
    est = {}
    for name, fn in fns.items():  # warm-up: at least one call, then to ~burst_s
        if warm.get(name) is not None and warm[name] >= burst_s:
            est[name] = warm[name]
            continue
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
        far = _far(samples) if r else set()
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, t = fns[name], est[name]
            my_rounds = rounds if t < 1.0 else (3 if t < 10.0 else 1)
            if r >= my_rounds or name in far:
                continue
            burst = max(1, min(50, int(burst_s / max(t, 1e-6))))
            for _ in range(burst):
                first_on_cuda = peaks is not None and clock.cuda and name not in peaks
                with track_peak() if first_on_cuda else contextlib.nullcontext() as peak:
                    samples[name].append(clock.once(fn))
                if first_on_cuda:
                    peaks[name] = peak[0]
            # a first call's estimate (compilation, the check's call) can only overstate
            est[name] = min(est[name], min(samples[name]))
    return samples


def _far(samples) -> set:
    """Providers timed in one round only: FAR_RATIO times slower than the fastest (by their first
    round's fastest call, not a first call's compilation) and over FAR_MIN_S a call. Their ratios
    lie far from every target's line (at most 5x; 100x between jobs, against ratios of 300x and
    more), and their repeats were most of a GPU run's timed seconds (the autograd references
    with 300 probes take 0.8 s a call at 3x32, d = 512 on the H100)."""
    best = {name: min(xs) for name, xs in samples.items() if xs}
    line = max(FAR_MIN_S, FAR_RATIO * min(best.values(), default=0.0))
    return {name for name, t in best.items() if t >= line}


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


@contextlib.contextmanager
def track_peak():
    """CUDA: yields a list that holds, after the block, the peak bytes allocated during it above
    what was allocated before it. The caching allocator counts on the host as tensors are made,
    so no synchronization is needed."""
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = [None]
    yield out
    out[0] = torch.cuda.max_memory_allocated() - base


def cpu_peak_memory(fn):
    """(peak bytes held by torch's CPU allocator, peak RSS growth in bytes or None) of one extra
    call (on CUDA the peak is taken in a timed call: ``measure``'s ``peaks``)."""
    gc.collect()
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
    return allocator_peak(fn), rss


def allocator_peak(fn) -> int:
    """Peak bytes held by torch's CPU allocator during fn(), from the profiler's memory events
    (allocations and frees: deterministic, unlike the resident set)."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    held = peak = 0
    for _, nb in events:
        held += nb
        peak = max(peak, held)
    return peak


_GEMM_CACHE = {}


def gemm_gflops(clock, shape: P.Shape, device, dtype, rounds: int, burst_s: float):
    """(GFLOP/s, which GEMM) of the fastest GEMM torch ships for (N, d) by (d, C), the layout of
    the caller's features and weight: the rate the floor is taken at (same run). torch.mm; on
    the CPU in float32 also oneDNN's matmul (torch.ops.mkldnn._linear_pointwise), which the ops
    take where it is faster (csrc/cpu/gemm_tuner.cpp): on CPUs where MKL's sgemm runs 256-bit
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
        s = measure(clock, fns, rounds, burst_s)
        rates = {k: 2 * shape.N * shape.d * shape.C / statistics.median(v) / 1e9 for k, v in s.items()}
        best = max(rates, key=rates.get)
        _GEMM_CACHE[key] = (rates[best], best)
    return _GEMM_CACHE[key]


_COPY_CACHE = {}


def copy_gbps(clock, device, rounds: int, burst_s: float):
    """GB/s of a large copy (bytes read plus bytes written, 256 MiB each way: past any cache),
    the memory ceiling the byte floor is taken at (same run, same threads)."""
    if device not in _COPY_CACHE:
        src = torch.empty(64 << 20, dtype=torch.float32, device=device).uniform_()
        dst = torch.empty_like(src)
        s = measure(clock, {"copy": lambda: dst.copy_(src)}, rounds, burst_s)
        _COPY_CACHE[device] = 2 * src.numel() * src.element_size() / statistics.median(s["copy"]) / 1e9
    return _COPY_CACHE[device]
