# SPDX-License-Identifier: Apache-2.0
"""The tools a build needs: the C++ compiler, ninja, nvcc or a HIP compiler, torch's headers
and libraries; which target this machine can build; and the toolchain's identity, so that a
failed build is retried only when a tool changes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import torch

from fusion_kernels import platform
from fusion_kernels.build.errors import TOOLCHAIN_HINT, BuildError
from fusion_kernels.build.sources import Target

CXX_CANDIDATES = ("c++", "g++", "clang++")


def find_cxx() -> str | None:
    """The C++ compiler: ``CXX`` when set (nothing else then), else the first of c++, g++,
    clang++ on PATH. None when there is none."""
    env = os.environ.get("CXX")
    if env:
        return shutil.which(env)
    for name in CXX_CANDIDATES:
        if found := shutil.which(name):
            return found
    return None


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


def missing_tool(target: Target) -> BuildError | None:
    """What stops a build of ``target`` before it starts (a tool that is not there), or None."""
    if find_cxx() is None:
        cxx = os.environ.get("CXX")
        what = f"CXX={cxx} is not an executable" if cxx else f"none of {', '.join(CXX_CANDIDATES)} is on PATH"
        return BuildError(f"no C++ compiler ({what})", TOOLCHAIN_HINT)
    if find_ninja() is None:
        return BuildError("ninja not found", 'Run "pip install ninja", or use the prebuilt wheel (README "Building").')
    if target.kind == "cuda" and find_nvcc() is None:
        return BuildError("nvcc not found", "Set CUDA_HOME or put nvcc on PATH, or build for --target cpu.")
    if target.kind == "rocm" and find_hip_compiler() is None:
        return BuildError("no HIP compiler found", "Install hipcc, or set FUSION_KERNELS_HIPCC to a HIP compiler.")
    return None


def _tool_identity(exe: str | None) -> str:
    if exe is None:
        return "none"
    path = shutil.which(exe) or exe
    try:
        proc = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60)
        first = (proc.stdout or proc.stderr).strip().splitlines()
        version = first[0] if first else f"exit {proc.returncode}"
    except (OSError, subprocess.SubprocessError) as exc:
        version = f"not runnable: {type(exc).__name__}"
    return f"{os.path.realpath(path)} ({version})"


def identity(target: Target) -> str:
    """The tools a build of ``target`` would use, with their versions (runs each ``--version``).

    A failed build is remembered under this identity: a new compiler, another ``CXX`` or an
    installed nvcc makes the next process try again."""
    parts = [f"CXX={os.environ.get('CXX', '')}", f"cxx={_tool_identity(find_cxx())}", f"ninja={find_ninja()}"]
    if target.kind == "cuda":
        parts.append(f"nvcc={_tool_identity(find_nvcc())}")
    elif target.kind == "rocm":
        parts.append(f"hip={_tool_identity(find_hip_compiler())}")
    return "; ".join(parts)


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
