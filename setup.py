"""Builds hessalign_ext._C: the CPU kernels always, the CUDA kernels whenever nvcc is found.

Environment: FORCE_CUDA=1 (CUDA sources even without CUDA_HOME detection), FORCE_ONLY_CPU=1
(skip CUDA), HESSALIGN_PORTABLE=1 (no AVX2/FMA for the CPU kernels, see cpu_isa_flags), TORCH_CUDA_ARCH_LIST (default "8.0;9.0": sm_80 and sm_90), DEBUG=1 (-O0 -g),
MAX_JOBS (parallel compile jobs). A GPU is never needed to compile the CUDA sources.
"""
import glob
import os
import sys

from setuptools import find_packages, setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def flag(name):
    return os.environ.get(name, "0") == "1"


def cuda_include_dirs():
    """Headers of the CUDA libraries (cuBLAS, cuSPARSE) that pip's nvidia wheels install
    next to torch when the toolkit itself lacks them."""
    dirs = []
    for site in sys.path:
        for sub in ("nvidia/cu13/include", "nvidia/cublas/include", "nvidia/cusparse/include"):
            path = os.path.join(site, sub)
            if os.path.isdir(path):
                dirs.append(path)
    return dirs


def cpu_isa_flags():
    """AVX2 + FMA (x86-64-v3) for the CPU kernels when the building machine has them: their
    elementwise and row loops then vectorize (the default x86-64 baseline is SSE2), and so do
    the softmax statistics written with ATen's Vectorized.
    HESSALIGN_PORTABLE=1 keeps the baseline, for a build that must run on older x86 CPUs."""
    if flag("HESSALIGN_PORTABLE") or not os.path.exists("/proc/cpuinfo"):
        return []
    with open("/proc/cpuinfo") as f:
        cpu_flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    if not {"avx2", "fma", "bmi2", "movbe"} <= set(cpu_flags):
        return []
    # ATen's Vectorized<T> in its AVX2 form (exp by Sleef, which libtorch_cpu exports)
    return ["-march=x86-64-v3", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]


def extension():
    debug = flag("DEBUG")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    with_cuda = not flag("FORCE_ONLY_CPU") and (flag("FORCE_CUDA") or cpp_extension.CUDA_HOME is not None)
    if with_cuda and cpp_extension.torch.version.cuda is None:
        print("hessalign_ext: nvcc found but this torch has no CUDA support; building the CPU kernels only")
        with_cuda = False
    isa = cpu_isa_flags()
    args = {"cxx": opt + isa + ["-fopenmp"]}
    kwargs = {}
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        args["nvcc"] = opt + ["--expt-relaxed-constexpr", "-lineinfo"]
        kwargs["include_dirs"] = cuda_include_dirs()
        cls = cpp_extension.CUDAExtension
    else:
        cls = cpp_extension.CppExtension
    print(f"hessalign_ext: building {'CPU + CUDA (' + os.environ['TORCH_CUDA_ARCH_LIST'] + ')' if with_cuda else 'CPU only'}"
          f", {'debug' if debug else 'release'}, CPU ISA {' '.join(isa) or 'baseline'}, {len(sources)} sources")
    return cls("hessalign_ext._C", sources, extra_compile_args=args, extra_link_args=["-fopenmp"], **kwargs)


setup(
    name="hessalign_ext",
    version="0.1.0",
    description="Closed-form softmax cross-entropy head curvature ops for Hessian alignment",
    packages=find_packages(include=["hessalign_ext", "hessalign_ext.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    install_requires=["torch>=2.11", "numpy"],
    entry_points={"console_scripts": ["hessalign = hessalign_ext.cli:main"]},
    python_requires=">=3.10",
)
