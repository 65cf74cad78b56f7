# SPDX-License-Identifier: Apache-2.0
"""What a library is built from and for: the C++/CUDA sources, their hash, and the targets."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from fusion_kernels.build.errors import BuildError

LIB_NAME = "libfusion_kernels.so"

#: The host sources, compiled for every target (the CPU kernels and the op registrations).
CPU_SOURCES = ("bindings.cpp", "ops.cpp", "rule_ops.cpp", "checks.cpp", "cpu/row_op_cpu.cpp", "mx_ops.cpp", "cpu/mx_cpu.cpp")
#: The device sources, added for CUDA targets (and hipified for ROCm targets).
GPU_SOURCES = (  # the longest compiles first (a parallel build starts them first)
    "cuda/row_op_per_group_rule.cu",
    "cuda/row_op_per_group_rule_int8.cu",
    "cuda/row_op_per_group_rule_fnuz.cu",
    "cuda/row_op_per_group.cu",
    "cuda/row_op_per_group_fnuz.cu",
    "cuda/row_op_per_token_rule.cu",
    "cuda/row_op_per_token.cu",
    "cuda/mx_cuda_fp4.cu",
    "cuda/mx_cuda_fp8.cu",
    "cuda/row_op_static.cu",
    "cuda/row_op_plain.cu",
    "cuda/row_op_cuda.cu",
)
#: CUDA architectures the kernels support (bf16 conversions need sm_80; FP8 conversions are
#: emulated below sm_89). Used by the wheel build and documented in the README.
SUPPORTED_CUDA_ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120")
#: The release wheel's archs: machine code for each, PTX of sm_90 for later GPUs, and Blackwell's
#: arch-specific targets, whose microscaling kernels convert to FP4 in hardware.
WHEEL_CUDA_ARCHS = ("sm_80", "sm_89", "sm_90", "sm_100a", "sm_120a")
SUPPORTED_ROCM_ARCHS = ("gfx90a", "gfx942", "gfx950")


def source_dir() -> Path:
    """The C++/CUDA sources: inside the installed package, or the repository's csrc/ (editable)."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "csrc", package.parent / "csrc"):
        if (candidate / "bindings.cpp").is_file():
            return candidate
    raise BuildError(
        f"the library's C++ sources are missing (looked in {package / 'csrc'} and {package.parent / 'csrc'})"
    )


def _all_source_files(src: Path) -> list[Path]:
    return sorted(p for p in src.rglob("*") if p.suffix in (".h", ".cuh", ".cpp", ".cu") and p.is_file())


def source_hash(src: Path | None = None) -> str:
    src = src or source_dir()
    h = hashlib.sha256()
    for p in _all_source_files(src):
        h.update(p.relative_to(src).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Target:
    """What one library is built for: the CPU kernels always, plus one GPU flavour."""

    kind: str = "cpu"  # "cpu", "cuda" or "rocm"
    archs: tuple[str, ...] = ()

    @property
    def tag(self) -> str:
        return self.kind if self.kind == "cpu" else f"{self.kind}-{'-'.join(self.archs)}"


def parse_targets(spec: str) -> list[Target]:
    """``"cuda:sm_80,sm_89,sm_90;rocm:gfx942"`` -> targets (the wheel build's specification)."""
    targets = []
    for item in filter(None, (s.strip() for s in spec.split(";"))):
        kind, _, archs = item.partition(":")
        if kind not in ("cpu", "cuda", "rocm"):
            raise BuildError(f"unknown target kind {kind!r} in {spec!r}")
        targets.append(Target(kind, tuple(a for a in archs.split(",") if a)))
    return targets
