# SPDX-License-Identifier: Apache-2.0
"""The one place that builds and loads the compiled op library.

It serves the JIT build (first use), ``python -m fusion_kernels build``, CI's compile checks and
the wheel's prebuilt libraries, so there is one recipe. One subject per module:

* :mod:`.sources`: the C++/CUDA sources (``csrc/``, shipped inside the distribution as
  ``fusion_kernels/csrc``), their hash, the targets (``CPU_SOURCES`` lists the host files);
* :mod:`.toolchain`: finding the compilers, ninja and torch's directories; the target this
  machine can build; the toolchain's identity;
* :mod:`.recipe`: flags, the build plan, its ``build.ninja``, running it (:func:`build`);
* :mod:`.hipify`: HIP sources from the CUDA ones, in the build directory;
* :mod:`.cache`: the JIT cache keyed by torch version, source hash and target, its file lock,
  and the failed builds it remembers;
* :mod:`.loader`: prebuilt lookup, :func:`load` and the :class:`LibraryState` it records;
* :mod:`.errors`: :class:`BuildError`, whose message is one line naming the full log's file.
"""

from fusion_kernels.build.cache import CACHE_ENV, RememberedBuildError, cache_dir_for, cache_root, ensure_built
from fusion_kernels.build.errors import BuildError
from fusion_kernels.build.hipify import (
    hip_cpu_sources,
    hip_extra_flags,
    hip_gpu_sources,
    hip_offload_flags,
    hipify_sources,
)
from fusion_kernels.build.loader import (
    DISABLE_ENV,
    NO_JIT_ENV,
    LibraryState,
    find_prebuilt,
    load,
    prebuilt_root,
    state,
)
from fusion_kernels.build.recipe import (
    TORCH_TARGET_VERSION,
    TORCH_TARGET_VERSION_HEX,
    Plan,
    build,
    common_defines,
    cuda_gencode_flags,
    make_plan,
    prebuild,
    run_plan,
    write_manifest,
)
from fusion_kernels.build.sources import (
    CPU_SOURCES,
    GPU_SOURCES,
    LIB_NAME,
    SUPPORTED_CUDA_ARCHS,
    SUPPORTED_ROCM_ARCHS,
    WHEEL_CUDA_ARCHS,
    Target,
    parse_targets,
    source_dir,
    source_hash,
)
from fusion_kernels.build.toolchain import find_cxx, find_hip_compiler, find_ninja, find_nvcc, jit_target

__all__ = [
    "CACHE_ENV",
    "CPU_SOURCES",
    "DISABLE_ENV",
    "GPU_SOURCES",
    "LIB_NAME",
    "NO_JIT_ENV",
    "SUPPORTED_CUDA_ARCHS",
    "SUPPORTED_ROCM_ARCHS",
    "TORCH_TARGET_VERSION",
    "TORCH_TARGET_VERSION_HEX",
    "WHEEL_CUDA_ARCHS",
    "BuildError",
    "LibraryState",
    "Plan",
    "RememberedBuildError",
    "Target",
    "build",
    "cache_dir_for",
    "cache_root",
    "common_defines",
    "cuda_gencode_flags",
    "ensure_built",
    "find_cxx",
    "find_hip_compiler",
    "find_ninja",
    "find_nvcc",
    "find_prebuilt",
    "hip_cpu_sources",
    "hip_extra_flags",
    "hip_gpu_sources",
    "hip_offload_flags",
    "hipify_sources",
    "jit_target",
    "load",
    "make_plan",
    "parse_targets",
    "prebuild",
    "prebuilt_root",
    "run_plan",
    "source_dir",
    "source_hash",
    "state",
    "write_manifest",
]
