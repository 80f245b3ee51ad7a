"""Static check of the CUDA kernels' memory-level parallelism, from their SASS (no GPU needed).

A streaming kernel is bound by how many loads each warp keeps in flight. In a loop that loads,
computes and stores element by element, a load the compiler places after a store is issued
only once that store has its value, i.e. after the previous element's loads returned: the
warp then waits a full memory latency per element. This script compiles csrc/cuda/*.cu for one
architecture, disassembles every kernel and, for each loop that stores (a backward branch's
body holding STG), counts its global loads (LDG), its stores, and its loads that come after
the loop's first store ("late loads"). A loop whose loads all precede its stores has 0.

Usage (from the repository root; needs nvcc and cuobjdump, which Triton's wheel bundles)::

    python benchmarks/sass_loops.py [--arch sm_90] [--root .] [--only head_hvp] [--out sass_loops.md]
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor

INSTR = re.compile(r"^\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
FUNC = re.compile(r"^\s+Function : (\S+)")
BRA = re.compile(r"\bBRA\s+(?:`\(\.L_x_\d+\)|0x([0-9a-f]+))")


def cuobjdump() -> str:
    found = os.environ.get("CUOBJDUMP") or shutil.which("cuobjdump")
    if found:
        return found
    try:
        import triton
        path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        if os.path.exists(path):
            return path
    except ImportError:
        pass
    sys.exit("sass_loops: no cuobjdump (set CUOBJDUMP, or install the CUDA toolkit's binutils or triton)")


def include_flags() -> list[str]:
    from torch.utils import cpp_extension
    dirs = [*cpp_extension.include_paths(), sysconfig.get_paths()["include"]]
    for site in sys.path:  # cuBLAS's headers from pip's nvidia wheel (as setup.py finds them)
        sub = os.path.join(site, "nvidia", "cu13", "include")
        if os.path.isdir(sub):
            dirs.append(sub)
    return [f"-I{d}" for d in dirs]


def compile_cubin(nvcc: str, source: str, arch: str, out: str) -> None:
    cmd = [nvcc, "-O3", "--expt-relaxed-constexpr", "-std=c++20", f"-arch={arch}", "-cubin", *include_flags(),
           "-o", out, source]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def demangle(names: list[str]) -> list[str]:
    if not shutil.which("c++filt"):
        return names
    res = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
    return res.stdout.splitlines()


def functions(sass: str) -> dict[str, list[tuple[int, str]]]:
    out: dict[str, list[tuple[int, str]]] = {}
    current = None
    for line in sass.splitlines():
        m = FUNC.match(line)
        if m:
            current = out.setdefault(m.group(1), [])
            continue
        m = INSTR.match(line)
        if m and current is not None:
            current.append((int(m.group(1), 16), m.group(2)))
    return out


def storing_loops(code: list[tuple[int, str]]) -> list[dict]:
    """Each backward branch's body [target, branch] that holds a global store, innermost first."""
    loops = []
    for addr, text in code:
        m = BRA.search(text)
        if not m or m.group(1) is None:
            continue
        target = int(m.group(1), 16)
        if target >= addr:
            continue
        body = [t for a, t in code if target <= a <= addr]
        ops = [t.split()[1] if t.startswith("@") else t.split()[0] for t in body]
        stores = [i for i, op in enumerate(ops) if op.startswith("STG")]
        if not stores:
            continue
        loads = [i for i, op in enumerate(ops) if op.startswith("LDG")]
        loops.append({"range": f"{target:#x}-{addr:#x}", "size": len(body), "ldg": len(loads), "stg": len(stores),
                      "late": sum(i > stores[0] for i in loads)})
    return sorted(loops, key=lambda d: d["size"])


def short(name: str) -> str:
    name = name.replace("hessalign::", "").replace("c10::", "").replace("void ", "")
    return re.sub(r"\(.*\)$", "", name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--root", default=".", help="source tree to compile (e.g. a git worktree of another commit)")
    ap.add_argument("--only", action="append", default=[], help="compile only csrc/cuda/<name>_cuda.cu (repeatable)")
    ap.add_argument("--kernels", default="rows_kernel|elements_kernel", help="regex of kernel names to report")
    ap.add_argument("--out", help="also write the markdown table here")
    args = ap.parse_args()
    nvcc = os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc")
    sources = sorted(glob.glob(os.path.join(args.root, "csrc", "cuda", "*.cu")))
    if args.only:
        sources = [s for s in sources if os.path.basename(s)[: -len("_cuda.cu")] in args.only]
    dump = cuobjdump()
    with tempfile.TemporaryDirectory() as tmp:
        cubins = [os.path.join(tmp, os.path.basename(s) + ".cubin") for s in sources]
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            list(pool.map(lambda sc: compile_cubin(nvcc, sc[0], args.arch, sc[1]), zip(sources, cubins)))
        kernels: dict[str, list[dict]] = {}
        for cubin in cubins:
            sass = subprocess.run([dump, "-sass", cubin], capture_output=True, text=True, check=True).stdout
            for mangled, code in functions(sass).items():
                if mangled not in kernels:  # a kernel instantiated by several sources is read once
                    kernels[mangled] = storing_loops(code)
    names = list(kernels)
    rows = []
    for mangled, pretty in zip(names, demangle(names)):
        if not re.search(args.kernels, pretty) or not kernels[mangled]:
            continue
        worst = max(kernels[mangled], key=lambda d: (d["late"], d["size"]))
        rows.append((short(pretty), len(kernels[mangled]), worst))
    rows.sort()
    lines = [f"SASS ({args.arch}) of csrc/cuda/*.cu in {os.path.abspath(args.root)}: per kernel, its storing loop "
             "with the most late loads", "",
             "| kernel | storing loops | loop | LDG | STG | late loads |", "|---|---:|---|---:|---:|---:|"]
    lines += [f"| `{k}` | {n} | {w['range']} | {w['ldg']} | {w['stg']} | {w['late']} |" for k, n, w in rows]
    late = sum(w["late"] > 0 for _, _, w in rows)
    lines += ["", f"{late} of {len(rows)} kernels have a storing loop with late loads."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
