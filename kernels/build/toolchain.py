# SPDX-License-Identifier: Apache-2.0
"""The tools a build needs: the C++ compiler, ninja, nvcc or a HIP compiler, torch's headers
and libraries; and which target this machine can build."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from fusion_kernels import platform
from fusion_kernels.build.sources import Target


def find_cxx() -> str:
    """The C++ compiler: ``CXX`` when set, else c++ or g++ on PATH."""
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or "c++"


def find_nvcc() -> str | None:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def cuda_lib_dir(nvcc: str) -> Path:
    home = Path(nvcc).resolve().parent.parent
    for sub in ("lib64", "lib", "targets/x86_64-linux/lib"):
        if (home / sub / "libcudart_static.a").is_file():
            return home / sub
    return home / "lib64"


def find_hip_compiler() -> str | None:
    env = os.environ.get("FUSION_KERNELS_HIPCC")
    if env:
        return env
    rocm = os.environ.get("ROCM_PATH", "/opt/rocm")
    if (Path(rocm) / "bin" / "hipcc").is_file():
        return str(Path(rocm) / "bin" / "hipcc")
    return shutil.which("hipcc")


def find_ninja() -> str | None:
    try:
        import ninja  # type: ignore[import-not-found]

        exe = Path(ninja.BIN_DIR) / "ninja"
        if exe.is_file():
            return str(exe)
    except ImportError:
        pass
    return shutil.which("ninja")


def torch_dirs() -> tuple[Path, Path]:
    """torch's include and lib directories."""
    root = Path(torch.__file__).resolve().parent
    return root / "include", root / "lib"


def jit_target() -> tuple[Target, str | None]:
    """The target a JIT build should use here, and why GPU kernels are left out (if they are)."""
    kind = platform.build_kind()
    if kind == "cuda":
        archs = platform.cuda_build_archs()
        if not archs:
            return Target(), "no CUDA GPU visible and FUSION_KERNELS_CUDA_ARCHS unset"
        if find_nvcc() is None:
            return Target(), "nvcc not found (set CUDA_HOME or put nvcc on PATH)"
        return Target("cuda", tuple(archs)), None
    if kind == "rocm":
        archs = platform.rocm_build_archs()
        if not archs:
            return Target(), "no ROCm GPU visible and FUSION_KERNELS_ROCM_ARCHS unset"
        if find_hip_compiler() is None:
            return Target(), "no HIP compiler found (hipcc, or clang++ with --rocm-path)"
        return Target("rocm", tuple(archs)), None
    return Target(), None
