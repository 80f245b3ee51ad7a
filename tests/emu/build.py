"""Builds the emulated-CUDA op library (torch.ops.hessalign_emu) from the source tree.

The build is keyed by a hash of csrc/ and tests/emu/, so an edited kernel header is picked
up by the next pytest run without reinstalling. HESSALIGN_EMU_SANITIZE=1 builds with
AddressSanitizer and UndefinedBehaviorSanitizer (run python with LD_PRELOAD=$(gcc
-print-file-name=libasan.so)).
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess

import torch
from torch.utils import cpp_extension

ROOT = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
SANITIZE = os.environ.get("HESSALIGN_EMU_SANITIZE", "0") == "1"
SAN_FLAGS = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"] if SANITIZE else []
# the sanitizer build runs the float64 subset: its ops take float and double only (emu_ops.cpp)
OPS_DEFINES = ["-DHE_EMU_FLOAT_ONLY"] if SANITIZE else []


def _source_hash() -> str:
    h = hashlib.sha256()
    files = sorted([*ROOT.glob("csrc/**/*"), *HERE.glob("*.cpp"), *HERE.glob("*.h"), HERE / "build.py"])
    for f in files:
        if f.is_file():
            h.update(str(f.relative_to(ROOT)).encode())
            h.update(f.read_bytes())
    h.update(torch.__version__.encode())
    h.update(b"sanitize" if SANITIZE else b"")
    return h.hexdigest()[:16]


def load() -> None:
    """Compiles (if needed) and loads the library; registers torch.ops.hessalign_emu."""
    key = _source_hash()
    build_dir = ROOT / "build" / "emu" / key
    build_dir.mkdir(parents=True, exist_ok=True)
    obj = build_dir / "emu_kernels.o"
    if not obj.exists():
        # The emulation unit sees only c10's 16-bit scalar types of torch, so it takes flags torch's would not.
        tmp = obj.with_suffix(".tmp.o")
        subprocess.run(["g++", "-std=c++17", "-O1", "-g", "-fPIC", "-fno-extern-tls-init", "-Wno-unknown-pragmas",
                        "-fopenmp", *SAN_FLAGS, "-I", cpp_extension.include_paths()[0],
                        "-c", str(HERE / "emu_kernels.cpp"), "-o", str(tmp)], check=True)
        tmp.rename(obj)
    cpp_extension.load(
        name=f"hessalign_emu_{key}",
        # host/gemm.h's CPU GEMMs
        sources=[str(HERE / "emu_ops.cpp"),
                 *(str(ROOT / "csrc" / "cpu" / f) for f in ("onednn_gemm.cpp", "gemm_tuner.cpp", "segment_tn_cpu.cpp",
                                                            "few_classes_nt_cpu.cpp"))],
        extra_cflags=["-O1", *SAN_FLAGS, *OPS_DEFINES],
        extra_ldflags=[str(obj), "-fopenmp", *SAN_FLAGS],
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )
