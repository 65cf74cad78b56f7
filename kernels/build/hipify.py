# SPDX-License-Identifier: Apache-2.0
"""HIP sources from the CUDA ones: torch's hipify into the build directory (never into the
source tree), the names hipify gives the translated files, and the HIP compile flags."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
from pathlib import Path

from fusion_kernels.build.errors import BuildError
from fusion_kernels.build.sources import CPU_SOURCES, GPU_SOURCES


def hip_gpu_sources() -> list[str]:
    """The device sources after hipify: cuda/<name>.cu -> hip/<name with cuda -> hip>.hip."""
    return ["hip/" + Path(rel).name.replace("cuda", "hip").replace(".cu", ".hip") for rel in GPU_SOURCES]


def hip_cpu_sources(hip_src: Path) -> list[str]:
    """The host sources after hipify (a file that includes the CUDA entry point gets a _hip twin)."""
    out = []
    for rel in CPU_SOURCES:
        twin = rel.replace(".cpp", "_hip.cpp")
        out.append(twin if (hip_src / twin).is_file() else rel)
    return out


def hip_offload_flags(archs: tuple[str, ...]) -> list[str]:
    return [f"--offload-arch={a}" for a in archs]


def hip_extra_flags() -> list[str]:
    """Device-compile flags of the HIP build: the *_sync warp builtins (64-bit lane masks), and
    ``FUSION_KERNELS_HIP_FLAGS`` (e.g. ``--rocm-path=...`` when the compiler is a plain clang)."""
    extra = shlex.split(os.environ.get("FUSION_KERNELS_HIP_FLAGS", ""))
    return ["-DFK_WITH_CUDA", "-DUSE_ROCM", "-DHIP_ENABLE_WARP_SYNC_BUILTINS", *extra]


def hipify_sources(src: Path, dest: Path) -> Path:
    """Copy the sources to ``dest`` and translate the CUDA ones to HIP with torch's hipify.

    hipify writes the translated files into ``dest/hip/`` (``row_op_cuda.cu`` becomes
    ``hip/row_op_hip.hip``) and a ``_hip`` twin of host files that include CUDA headers. The
    source tree is never touched. What hipify leaves alone (FP8 intrinsics, *_sync shuffles) is
    handled by csrc/cuda/compat.cuh.
    """
    from torch.utils.hipify import hipify_python

    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        hipify_python.hipify(
            project_directory=str(dest),
            output_directory=str(dest),
            includes=[str(dest / "**")],
            header_include_dirs=[str(dest)],
            extensions=(".cu", ".cuh", ".h", ".cpp"),
            show_detailed=False,
            is_pytorch_extension=True,
            hipify_extra_files_only=False,
        )
    missing = [rel for rel in hip_gpu_sources() if not (dest / rel).is_file()]
    if missing:
        raise BuildError(f"hipify did not produce {missing}")
    return dest
