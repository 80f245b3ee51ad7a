#!/usr/bin/env python3
"""Mutation check of the emulated CUDA kernel tests (issue 8: "show that the tests bite").

Each mutation below is data: a file under csrc/, its exact original text, the replacement and
a description. The script makes a temporary git worktree of the repository (HEAD plus the
working tree's modified tracked files) under /tmp, copies the compiled CPU module
(hessalign_ext/_C*.so) into it, and then for every mutation: applies it, runs the
`cuda_emulated` tests (tests/test_cuda_emulated.py, -x) under CUDAEMU_ORDER=forward, reverse
and scrambled, each with a timeout, optionally runs the ASan+UBSan build once, and restores the
file. tests/emu/build.py rebuilds the emulated library from the worktree's sources (keyed by
their hash), so each mutation is compiled in; the CPU ops the results are compared with are the
unmutated compiled ones.

It prints a table: mutation, orders that caught it, the first failing test and how it failed.
A mutation that no order catches is a gap in the tests (or an equivalent mutant).

    .venv/bin/python scripts/mutation_check.py                # baseline + every mutation
    .venv/bin/python scripts/mutation_check.py --only C3,G1   # a few
    .venv/bin/python scripts/mutation_check.py --list         # the mutations, nothing run

Runs with the interpreter it was started with (sys.executable); OMP_NUM_THREADS defaults to 2.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
ORDERS = ("forward", "reverse", "scrambled")
TEST_FILE = "tests/test_cuda_emulated.py"
# The -k subset that runs each kernel once: scripts/test.sh's EVERY_KERNEL, read from there
SANITIZE_K = re.search(r'^EVERY_KERNEL="([^"]+)"', (REPO / "scripts" / "test.sh").read_text(), re.M).group(1)

# category: a = dropped __syncthreads, b = thread/lane/row index shifted by one, c = broken tail
# guard, d = wrong shuffle offset, e = off-by-one in a per-domain loop.
# occurrence: which match of `original` (0-based) when the text occurs more than once in the file.
# sanitize: also run the ASan+UBSan build once (CUDAEMU_ORDER=scrambled, -k SANITIZE_K).
# equivalent: why the mutant is expected to survive (same results); a survivor without it is a test gap.
MUTATIONS = [
    # ---- csrc/cuda/common.cuh: warp_allreduce_sum, block_reduce_sum
    dict(id="C1", file="csrc/cuda/common.cuh", category="d",
         original="for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);",
         replacement="for (int o = kWarp / 2; o > 1; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);",
         description="warp_allreduce_sum: skip the xor-1 butterfly step (o > 0 -> o > 1)"),
    dict(id="C2", file="csrc/cuda/common.cuh", category="d",
         original="v += __shfl_xor_sync(kFullMask, v, o);",
         replacement="v += __shfl_xor_sync(kFullMask, v, o + 1);",
         description="warp_allreduce_sum: shuffle xor offset o -> o + 1",
         equivalent="xor masks 17, 9, 5, 3, 2 are a basis of GF(2)^5: still a full 32-lane allreduce"),
    dict(id="C9", file="csrc/cuda/common.cuh", category="d",
         original="v += __shfl_xor_sync(kFullMask, v, o);",
         replacement="v += __shfl_xor_sync(kFullMask, v, o >> 1);",
         description="warp_allreduce_sum: shuffle xor offset o -> o >> 1 (16 never crossed, last step self)"),
    dict(id="C3", file="csrc/cuda/common.cuh", category="a", occurrence=0,
         original="  __syncthreads();\n", replacement="",
         description="block_reduce_sum: drop the 1st __syncthreads (partials published -> read)"),
    dict(id="C4", file="csrc/cuda/common.cuh", category="a", occurrence=1,
         original="  __syncthreads();\n", replacement="",
         description="block_reduce_sum: drop the 2nd __syncthreads (partials read -> reused)",
         equivalent="no kernel calls block_reduce_sum twice in a block, and the emulator runs all warps in "
                    "step through the warp shuffles, so a next call could not overwrite partial early"),
    dict(id="C5", file="csrc/cuda/common.cuh", category="c", sanitize=True,
         original="total = lane < kWarpsPerBlock ? partial[lane] : T(0);",
         replacement="total = lane <= kWarpsPerBlock ? partial[lane] : T(0);",
         description="block_reduce_sum: tail guard lane < 8 -> lane <= 8 (reads partial[8])"),
    dict(id="C6", file="csrc/cuda/common.cuh", category="b",
         original="warp = threadIdx.x / kWarp;",
         replacement="warp = (threadIdx.x + 1) / kWarp;",
         description="block_reduce_sum: warp index from threadIdx.x + 1"),
    dict(id="C7", file="csrc/cuda/common.cuh", category="b",
         original="total = lane < kWarpsPerBlock ? partial[lane] : T(0);",
         replacement="total = lane + 1 < kWarpsPerBlock ? partial[lane + 1] : T(0);",
         description="block_reduce_sum: warp 0 reads partial[lane + 1] (warp 0's partial lost)"),
    dict(id="C8", file="csrc/cuda/common.cuh", category="b",
         original="const int lane = threadIdx.x % kWarp, warp",
         replacement="const int lane = (threadIdx.x + 1) % kWarp, warp",
         description="block_reduce_sum: lane from threadIdx.x + 1",
         equivalent="a permutation of lanes: after the allreduce every lane holds the warp's sum, and lanes "
                    "31, 0..6 of warp 0 still read partial[0..7]"),
    # ---- csrc/cuda/row_kernels.cuh: rows_kernel, elements_kernel
    dict(id="R1", file="csrc/cuda/row_kernels.cuh", category="b",
         original="index_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;",
         replacement="index_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x + 1) / kWarp;",
         description="rows_kernel: row index from threadIdx.x + 1"),
    dict(id="R2", file="csrc/cuda/row_kernels.cuh", category="b",
         original="for (index_t c = lane; c < cols; c += kWarp) op.partial(r, c, s);",
         replacement="for (index_t c = lane + 1; c < cols; c += kWarp) op.partial(r, c, s);",
         description="rows_kernel: partial-sum column loop starts at lane + 1"),
    dict(id="R3", file="csrc/cuda/row_kernels.cuh", category="b",
         original="for (index_t c = lane; c < cols; c += kWarp) op.map(r, c, s);",
         replacement="for (index_t c = lane + 1; c < cols; c += kWarp) op.map(r, c, s);",
         description="rows_kernel: map column loop starts at lane + 1"),
    dict(id="R4", file="csrc/cuda/row_kernels.cuh", category="c", sanitize=True,
         original="if (r >= rows) return;", replacement="if (r > rows) return;",
         description="rows_kernel: row tail guard r >= rows -> r > rows"),
    dict(id="R5", file="csrc/cuda/row_kernels.cuh", category="c",
         original="  if (r >= rows) return;\n", replacement="",
         description="rows_kernel: row tail guard removed"),
    dict(id="R6", file="csrc/cuda/row_kernels.cuh", category="c", sanitize=True,
         original="for (index_t c = lane; c < cols; c += kWarp) op.map(r, c, s);",
         replacement="for (index_t c = lane; c <= cols; c += kWarp) op.map(r, c, s);",
         description="rows_kernel: column tail guard c < cols -> c <= cols (map loop)"),
    dict(id="R7", file="csrc/cuda/row_kernels.cuh", category="c", sanitize=True,
         original="i < n; i += stride", replacement="i <= n; i += stride",
         description="elements_kernel: tail guard i < n -> i <= n"),
    dict(id="R8", file="csrc/cuda/row_kernels.cuh", category="b",
         original="index_t(blockIdx.x) * blockDim.x + threadIdx.x;",
         replacement="index_t(blockIdx.x) * blockDim.x + threadIdx.x + 1;",
         description="elements_kernel: element index from threadIdx.x + 1"),
    # ---- csrc/cuda/softmax_kernels.cuh: softmax_stats_kernel
    dict(id="S1", file="csrc/cuda/softmax_kernels.cuh", category="b",
         original="index_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;",
         replacement="index_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x + 1) / kWarp;",
         description="softmax_stats_kernel: row index from threadIdx.x + 1"),
    dict(id="S2", file="csrc/cuda/softmax_kernels.cuh", category="b",
         original="(L + r * T, T, lane, kWarp)", replacement="(L + r * T, T, lane + 1, kWarp)",
         description="softmax_stats_kernel: lane's first column lane + 1"),
    dict(id="S3", file="csrc/cuda/softmax_kernels.cuh", category="c", sanitize=True,
         original="if (r >= N) return;", replacement="if (r > N) return;",
         description="softmax_stats_kernel: row tail guard r >= N -> r > N"),
    dict(id="S4", file="csrc/cuda/softmax_kernels.cuh", category="d",
         original="for (int o = kWarp / 2; o > 0; o >>= 1) {",
         replacement="for (int o = kWarp / 2; o > 1; o >>= 1) {",
         description="softmax_stats_kernel: skip the xor-1 merge step (o > 0 -> o > 1)"),
    dict(id="S5", file="csrc/cuda/softmax_kernels.cuh", category="d",
         original="__shfl_xor_sync(kFullMask, p.s, o)", replacement="__shfl_xor_sync(kFullMask, p.s, o >> 1)",
         description="softmax_stats_kernel: sum shuffled with offset o >> 1 (pairs mismatched)"),
    dict(id="M1", file="csrc/math/softmax.h", category="c",
         original="for (index_t c = begin; c < n; c += step) {",
         replacement="for (index_t c = begin; c <= n; c += step) {",
         description="softmax_row_stats (run by softmax_stats_kernel): column tail c < n -> c <= n"),
    # ---- csrc/cuda/segment_kernels.cuh: segment_sum_kernel, ce_coeffs_kernel
    dict(id="G1", file="csrc/cuda/segment_kernels.cuh", category="a",
         original="  __syncthreads();\n", replacement="",
         description="ce_coeffs_kernel: drop the __syncthreads after denom is written"),
    dict(id="G2", file="csrc/cuda/segment_kernels.cuh", category="e", sanitize=True,
         original="i < offsets[e + 1]; i += blockDim.x) s += vals[i];",
         replacement="i <= offsets[e + 1]; i += blockDim.x) s += vals[i];",
         description="segment_sum_kernel: domain loop i < end -> i <= end"),
    dict(id="G3", file="csrc/cuda/segment_kernels.cuh", category="b",
         original="for (index_t i = offsets[e] + threadIdx.x;",
         replacement="for (index_t i = offsets[e] + threadIdx.x + 1;",
         description="segment_sum_kernel: domain loop starts at threadIdx.x + 1"),
    dict(id="G4", file="csrc/cuda/segment_kernels.cuh", category="e",
         original="i < end; i += blockDim.x) s += ce_denominator_term(p, i);",
         replacement="i <= end; i += blockDim.x) s += ce_denominator_term(p, i);",
         description="ce_coeffs_kernel: denominator loop i < end -> i <= end"),
    dict(id="G5", file="csrc/cuda/segment_kernels.cuh", category="e", sanitize=True,
         original="i < end; i += blockDim.x) ce_row_coeffs(p, i, denom, c, a, b);",
         replacement="i <= end; i += blockDim.x) ce_row_coeffs(p, i, denom, c, a, b);",
         description="ce_coeffs_kernel: coefficient loop i < end -> i <= end"),
    dict(id="G6", file="csrc/cuda/segment_kernels.cuh", category="b",
         original="begin + threadIdx.x; i < end; i += blockDim.x) ce_row_coeffs",
         replacement="begin + threadIdx.x + 1; i < end; i += blockDim.x) ce_row_coeffs",
         description="ce_coeffs_kernel: coefficient loop starts at threadIdx.x + 1"),
    dict(id="G7", file="csrc/cuda/segment_kernels.cuh", category="e",
         original="i += blockDim.x) s += vals[i];", replacement="i += blockDim.x - 1) s += vals[i];",
         description="segment_sum_kernel: domain loop stride blockDim.x - 1 (row 255 counted twice)"),
    dict(id="G8", file="csrc/cuda/segment_kernels.cuh", category="e",
         original="i < end; i += blockDim.x) s += ce_denominator_term(p, i);",
         replacement="i < end; i += blockDim.x + 1) s += ce_denominator_term(p, i);",
         description="ce_coeffs_kernel: denominator loop stride blockDim.x + 1 (row 256 skipped)"),
]


def sh(*args, cwd=None, check=True):
    return subprocess.run(args, cwd=cwd, check=check, text=True, capture_output=True).stdout


def make_worktree(repo: pathlib.Path) -> pathlib.Path:
    """A detached worktree of HEAD under /tmp, with the working tree's modified tracked files
    copied in (so an edited test file is what is checked) and the compiled _C module."""
    wt = pathlib.Path(tempfile.mkdtemp(prefix="hessalign-mutation-"))
    wt.rmdir()
    sh("git", "-C", str(repo), "worktree", "add", "--detach", str(wt), "HEAD")
    for name in sh("git", "-C", str(repo), "diff", "--name-only", "HEAD").split():
        src = repo / name
        if src.is_file():
            shutil.copy2(src, wt / name)
    so = sorted((repo / "hessalign_ext").glob("_C*.so"))
    if not so:
        sys.exit(f"no compiled hessalign_ext/_C*.so in {repo}: build the extension first")
    for f in so:
        shutil.copy2(f, wt / "hessalign_ext" / f.name)
    return wt


def remove_worktree(repo: pathlib.Path, wt: pathlib.Path) -> None:
    subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(wt)], capture_output=True)
    shutil.rmtree(wt, ignore_errors=True)
    subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True)


def run_pytest(wt: pathlib.Path, env_extra: dict, timeout: int, extra_args=()) -> tuple[int | None, str, float]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    env["PYTHONPATH"] = str(wt)
    env.update(env_extra)
    # --capture=sys: what C++ writes to fd 2 (the emulator's barrier-mismatch message, ASan and
    # UBSan reports) reaches the output even when the process aborts.
    cmd = [sys.executable, "-m", "pytest", "-v", "-x", "-m", "cuda_emulated", "-p", "no:cacheprovider",
           "--capture=sys", TEST_FILE, *extra_args]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=wt, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        rc = None
    return rc, out, time.monotonic() - t0


NODE = re.compile(r"^(tests/test_cuda_emulated\.py::\S+)(?: (PASSED|FAILED|ERROR|SKIPPED))?", re.M)


def classify(rc, out: str) -> tuple[str, str]:
    """(outcome, first failing test). outcome: pass | FAIL | CRASH | DEADLOCK | TIMEOUT | BUILD-ERROR."""
    nodes = NODE.findall(out)
    bad = next((n for n, st in nodes if st in ("FAILED", "ERROR")), "")
    unfinished = nodes[-1][0] if nodes and not nodes[-1][1] else ""
    short = lambda n: n.split("::", 1)[-1]  # noqa: E731
    if rc == 0:
        return "pass", ""
    if "CalledProcessError" in out or "Error building extension" in out:
        return "BUILD-ERROR", short(bad or unfinished)
    if rc is None:
        return "TIMEOUT", short(unfinished or bad)
    if "cudaemu: barrier mismatch" in out:
        return "DEADLOCK", short(unfinished or bad)
    if bad:
        return "FAIL", short(bad)
    if rc == 5:
        return "NO-TESTS", ""
    return f"CRASH(rc={rc})", short(unfinished)


def sanitizer_run(wt: pathlib.Path, timeout: int) -> tuple[str, float]:
    # libstdc++ after libasan: ASan's __cxa_throw interceptor needs the real one (scripts/test.sh)
    asan = sh("gcc", "-print-file-name=libasan.so").strip() + " " + sh("gcc", "-print-file-name=libstdc++.so").strip()
    rc, out, secs = run_pytest(wt, {"HESSALIGN_EMU_SANITIZE": "1", "CUDAEMU_ORDER": "scrambled",
                                    "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
                                    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1", "LD_PRELOAD": asan},
                               timeout, ["-k", SANITIZE_K])
    m = re.search(r"ERROR: AddressSanitizer: ([\w-]+)", out)
    frame = re.search(r"#\d+ 0x[0-9a-f]+ in ([^\n]*?) (/\S*(?:csrc|tests/emu)/\S+)", out)  # first frame in our code
    where = ""
    if frame:
        fn = re.search(r"((?:\w+(?:<[^()]*?>)?::)?\w+)(?:<[^()]*>)?\(", frame.group(1))
        where = f" in {fn.group(1) if fn else frame.group(1)[:40]} ({frame.group(2).split('/')[-1]})"
    if m:
        return f"ASan {m.group(1)}{where}", secs
    u = re.search(r"(\S+:\d+:\d+): runtime error: ([^\n]{0,80})", out)
    if u:
        return f"UBSan {u.group(1).split('/')[-1]}: {u.group(2)}", secs
    outcome, test = classify(rc, out)
    return ("no report, tests pass" if outcome == "pass" else f"no sanitizer report; {outcome} {test}"), secs


def apply(wt: pathlib.Path, m: dict) -> str:
    path = wt / m["file"]
    text = path.read_text()
    count = text.count(m["original"])
    occ = m.get("occurrence")
    if count == 0 or (occ is None and count != 1) or (occ is not None and occ >= count):
        raise SystemExit(f"{m['id']}: original text found {count} times in {m['file']} (occurrence={occ})")
    start = -1
    for _ in range((occ or 0) + 1):
        start = text.index(m["original"], start + 1)
    path.write_text(text[:start] + m["replacement"] + text[start + len(m["original"]):])
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", type=pathlib.Path, default=REPO, help="repository to copy (default: this one)")
    ap.add_argument("--only", help="comma-separated mutation ids")
    ap.add_argument("--orders", default=",".join(ORDERS))
    ap.add_argument("--timeout", type=int, default=900,
                    help="seconds per pytest run (an unmutated run took 2-8 min on 2 busy cores)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated runs")
    ap.add_argument("--no-sanitize", action="store_true", help="skip the ASan+UBSan runs")
    ap.add_argument("--keep", action="store_true", help="keep the temporary worktree")
    ap.add_argument("--json", type=pathlib.Path, help="also write the results as JSON here")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    a = ap.parse_args()
    muts = MUTATIONS
    if a.only:
        ids = a.only.split(",")
        muts = [m for m in MUTATIONS if m["id"] in ids]
    if a.list:
        for m in muts:
            print(f"{m['id']:3} {m['file']:32} ({m['category']}) {m['description']}")
        return 0
    orders = a.orders.split(",")
    t_start = time.monotonic()
    wt = make_worktree(a.repo.resolve())
    print(f"worktree {wt}; python {sys.executable}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '2')}",
          flush=True)
    results = []
    try:
        if not a.no_baseline:
            for order in orders:
                rc, out, secs = run_pytest(wt, {"CUDAEMU_ORDER": order}, a.timeout)
                outcome, test = classify(rc, out)
                print(f"baseline {order:9} {outcome} {test} ({secs:.0f}s)", flush=True)
                if outcome != "pass":
                    print(out[-3000:])
                    raise SystemExit("the unmutated tree does not pass: fix that first")
            if not a.no_sanitize and any(m.get("sanitize") for m in muts):
                verdict, secs = sanitizer_run(wt, a.timeout)
                print(f"baseline sanitizer: {verdict} ({secs:.0f}s)", flush=True)
        for m in muts:
            original = apply(wt, m)
            try:
                row = dict(id=m["id"], file=m["file"], category=m["category"], description=m["description"],
                           orders={}, first_failing="", how="", sanitizer="")
                for order in orders:
                    rc, out, secs = run_pytest(wt, {"CUDAEMU_ORDER": order}, a.timeout)
                    outcome, test = classify(rc, out)
                    row["orders"][order] = outcome
                    if outcome not in ("pass", "TIMEOUT", "BUILD-ERROR", "NO-TESTS") and not row["first_failing"]:
                        row["first_failing"], row["how"] = test, outcome
                    print(f"{m['id']:3} {order:9} {outcome:12} {test} ({secs:.0f}s)", flush=True)
                    if outcome == "BUILD-ERROR":
                        print(out[-3000:])
                if m.get("sanitize") and not a.no_sanitize:
                    row["sanitizer"], secs = sanitizer_run(wt, a.timeout)
                    print(f"{m['id']:3} sanitizer {row['sanitizer']} ({secs:.0f}s)", flush=True)
                results.append(row)
            finally:
                (wt / m["file"]).write_text(original)
    finally:
        if a.keep:
            print(f"kept {wt}")
        else:
            remove_worktree(a.repo.resolve(), wt)

    # A timeout is not counted as caught: on a loaded machine an unmutated run can take that long too.
    caught_kinds = lambda o: o not in ("pass", "BUILD-ERROR", "NO-TESTS", "TIMEOUT")  # noqa: E731
    print("\n| id | file | mutation | " + " | ".join(orders) + " | first failing test (how) | sanitizer |")
    print("|---|---|---|" + "---|" * len(orders) + "---|---|")
    for r in results:
        cells = ["caught" if caught_kinds(r["orders"][o]) else r["orders"][o] for o in orders]  # pass: not caught
        how = f"{r['first_failing']} ({r['how']})" if r["how"] else "**SURVIVED**"
        print(f"| {r['id']} | {pathlib.Path(r['file']).name} | ({r['category']}) {r['description']} | "
              + " | ".join(cells) + f" | {how} | {r['sanitizer']} |")
    survivors = [r["id"] for r in results if not any(caught_kinds(v) for v in r["orders"].values())]
    equivalent = {m["id"]: m["equivalent"] for m in muts if m.get("equivalent")}
    gaps = [i for i in survivors if i not in equivalent]
    total = time.monotonic() - t_start
    print(f"\n{len(results)} mutations, {len(results) - len(survivors)} caught; survived, expected equivalent: "
          f"{', '.join(i for i in survivors if i in equivalent) or 'none'}; survived, test gaps: "
          f"{', '.join(gaps) or 'none'}; wall time {total / 60:.1f} min")
    for i in survivors:
        if i in equivalent:
            print(f"  {i} equivalent: {equivalent[i]}")
    if a.json:
        a.json.write_text(json.dumps(dict(results=results, survivors=survivors, gaps=gaps, wall_s=total), indent=1))
    return 1 if gaps else 0


if __name__ == "__main__":
    sys.exit(main())
