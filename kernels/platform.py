# SPDX-License-Identifier: Apache-2.0
"""The one module that asks about hardware.

Everything else in fusion_kernels and fusion_passes asks here: which kind of device a tensor
lives on, its architecture and name (the CPU's model and vector instruction set), whether torch
is a ROCm build, the FP8 flavour a device uses, the warp size, whether the compiled library has
a kernel for a device, which CUDA/ROCm targets to build for. Nothing here runs at import: CUDA is initialised only when a question needs it.

Tests replace the answers with :func:`override` (a fake ROCm or CUDA platform) instead of
patching torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import threading
from collections.abc import Iterator

import torch

__all__ = [
    "DeviceInfo",
    "device_info",
    "cpu_isa",
    "cpu_model",
    "is_rocm",
    "fp8_dtype",
    "has_kernel",
    "inductor_unavailable",
    "build_kind",
    "visible_gpu_arch",
    "describe",
    "cuda_build_archs",
    "rocm_build_archs",
    "override",
    "FP8_MAX",
]

#: Largest finite value of each FP8 flavour (the quant kernels clamp to it before the cast).
FP8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e4m3fnuz: 240.0}

# AMD architectures whose FP8 is the fnuz flavour (MI300 series). gfx950 (MI350) uses OCP e4m3fn.
_FNUZ_ARCHS = ("gfx940", "gfx941", "gfx942")


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """What the plugin needs to know about one device type/index."""

    kind: str  # "cpu", "cuda", "rocm", or the torch device type for anything else ("xla", ...)
    arch: str | None  # "sm_90", "gfx942", None for cpu/unknown
    warp_size: int | None
    fp8_dtype: torch.dtype | None  # the FP8 flavour matmuls on this device expect
    fp8_supported: bool  # the device has FP8 conversion/matmul support worth targeting
    # The device's name as torch reports it ("NVIDIA H100 80GB HBM3"; the CPU model for cpu): two
    # devices of one arch (an H100 and an H200 are both sm_90) can differ in speed.
    name: str | None = None
    # cpu only: the vector instruction set torch's CPU kernels and Inductor's C++ code use here
    # ("AVX512", "AVX2", "DEFAULT", ...; see :func:`cpu_isa`).
    isa: str | None = None


@dataclasses.dataclass
class _Override:
    kind: str | None = None
    arch: str | None = None
    kernels: frozenset[str] | None = None  # device types our library "has kernels for"
    name: str | None = None
    isa: str | None = None


_override_local = threading.local()


def _current_override() -> _Override | None:
    return getattr(_override_local, "value", None)


@contextlib.contextmanager
def override(
    kind: str | None = None,
    arch: str | None = None,
    kernels_for: tuple[str, ...] | None = None,
    name: str | None = None,
    isa: str | None = None,
) -> Iterator[None]:
    """Pretend to be on another platform (tests, what-if reports).

    ``kind="rocm", arch="gfx942"`` makes CUDA-type devices look like an MI300;
    ``kind="cuda", arch="sm_90", name="NVIDIA H200"`` makes them look like an H200. ``isa`` is
    the CPU's instruction set (``"AVX2"``), ``name`` also the CPU model when ``kind`` is None.
    ``kernels_for`` sets the device types the library is taken to have kernels for (e.g.
    ``("cpu", "cuda")``).
    """
    previous = _current_override()
    kernels = frozenset(kernels_for) if kernels_for is not None else None
    _override_local.value = _Override(kind, arch, kernels, name, isa)
    try:
        yield
    finally:
        _override_local.value = previous


def is_rocm() -> bool:
    """True when torch is a ROCm build (or a ROCm platform is being simulated)."""
    ov = _current_override()
    if ov is not None and ov.kind is not None:
        return ov.kind == "rocm"
    return getattr(torch.version, "hip", None) is not None


def _device_type(device: torch.device | str | None) -> str:
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device).type


def _gpu_arch(index: int | None) -> str | None:
    if not torch.cuda.is_available():
        return None
    idx = torch.cuda.current_device() if index is None else index
    props = torch.cuda.get_device_properties(idx)
    if is_rocm():
        return getattr(props, "gcnArchName", "").split(":")[0] or None
    return f"sm_{props.major}{props.minor}"


def device_info(device: torch.device | str | None = None) -> DeviceInfo:
    """Describe ``device`` (default: the current accelerator, else cpu)."""
    dtype = _device_type(device)
    ov = _current_override()
    if dtype == "cpu":
        cpu_ov = ov if ov is not None and ov.kind in (None, "cpu") else None
        name = (cpu_ov.name if cpu_ov is not None else None) or cpu_model()
        isa = (ov.isa if ov is not None else None) or cpu_isa()
        return DeviceInfo("cpu", None, None, torch.float8_e4m3fn, True, name, isa)
    if dtype != "cuda":
        return DeviceInfo(dtype, None, None, None, False)
    if ov is not None and ov.kind is not None:
        kind, arch, name = ov.kind, ov.arch, ov.name
    else:
        kind = "rocm" if is_rocm() else "cuda"
        index = torch.device(device).index if device is not None else None
        arch = _gpu_arch(index)
        name = _gpu_name(index)
    if kind == "rocm":
        fnuz = arch is not None and arch.startswith(_FNUZ_ARCHS)
        fp8 = torch.float8_e4m3fnuz if fnuz else torch.float8_e4m3fn
        supported = arch is not None and (fnuz or arch.startswith(("gfx950", "gfx12")))
        return DeviceInfo("rocm", arch, 64, fp8, supported, name)
    supported = arch is None or _sm_number(arch) >= 89
    return DeviceInfo("cuda", arch, 32, torch.float8_e4m3fn, supported, name)


def _gpu_name(index: int | None) -> str | None:
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(torch.cuda.current_device() if index is None else index)


def cpu_isa() -> str:
    """The vector instruction set torch uses on this CPU: "AVX512", "AVX2", "DEFAULT" (none), or
    an ARM level ("SVE256"). Inductor's C++ code is generated for the same one (both follow
    ``ATEN_CPU_CAPABILITY``, which can only lower it)."""
    ov = _current_override()
    if ov is not None and ov.isa is not None:
        return ov.isa
    return torch.backends.cpu.get_cpu_capability()


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo's "model name"), else what Python knows."""
    import platform as _platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return _platform.processor() or _platform.machine() or "unknown CPU"


def _sm_number(arch: str) -> int:
    digits = "".join(ch for ch in arch if ch.isdigit())
    return int(digits) if digits else 0


@dataclasses.dataclass(frozen=True)
class CudaArch:
    """A CUDA target arch: ``sm_90``, or with nvcc's suffix, ``sm_100a`` (arch-specific: the
    features of exactly that arch, e.g. the FP4 and UE8M0 conversion instructions; its code runs
    only there) or ``sm_100f`` (family-specific: runs on the family's later minors too, sm_103)."""

    major: int
    minor: int
    suffix: str = ""  # "", "a" or "f"

    @property
    def number(self) -> str:
        return f"{self.major}{self.minor}{self.suffix}"

    def __str__(self) -> str:
        return f"sm_{self.number}"

    def runs_on(self, device: CudaArch) -> bool:
        """Whether machine code for this arch runs on a device of arch ``device`` (a device has
        no suffix: its compute capability). CUDA's binary compatibility: code for X.y runs on X.z
        for z >= y; arch-specific code only on X.y itself."""
        if self.suffix == "a":
            return (self.major, self.minor) == (device.major, device.minor)
        return self.major == device.major and device.minor >= self.minor


def parse_cuda_arch(arch: str) -> CudaArch:
    """``"sm_90"``, ``"sm_100a"``, ``"sm_120f"``, ``"9.0"``, ``"10.0a"``, ``"100a"`` -> CudaArch;
    ValueError naming the text otherwise."""
    text = arch.strip().lower().removeprefix("sm_").removeprefix("compute_")
    suffix = text[-1] if text[-1:] in ("a", "f") else ""
    body = text[: len(text) - len(suffix)]
    if "." in body:
        major_s, _, minor_s = body.partition(".")
    else:
        major_s, minor_s = body[:-1], body[-1:]
    if not (major_s.isdigit() and minor_s.isdigit() and len(minor_s) == 1):
        raise ValueError(f"not a CUDA arch: {arch!r} (expected e.g. sm_90, sm_100a, sm_120f or 9.0)")
    return CudaArch(int(major_s), int(minor_s), suffix)


def visible_gpu_arch() -> str | None:
    """The arch of the current GPU when torch has one (initialises CUDA), else None."""
    if build_kind() == "cpu" or not torch.cuda.is_available():
        return None
    return device_info("cuda").arch


def describe() -> str:
    """One line: torch, its build, and the visible GPU if any."""
    kind = build_kind()
    line = f"torch {torch.__version__}, {kind} build"
    if kind != "cpu":
        if torch.cuda.is_available():
            d = device_info("cuda")
            line += f", {torch.cuda.get_device_name(0)} ({d.kind} {d.arch}, warp {d.warp_size}, FP8 {d.fp8_dtype})"
        else:
            line += ", no GPU visible"
    return line


def fp8_dtype(device: torch.device | str | None = None) -> torch.dtype:
    """The FP8 flavour of ``device``: float8_e4m3fnuz on MI300 (gfx94x), float8_e4m3fn elsewhere."""
    info = device_info(device)
    return info.fp8_dtype or torch.float8_e4m3fn


def has_kernel(op_qualname: str, device: torch.device | str) -> bool:
    """Whether the loaded library registered a kernel of ``op_qualname`` for ``device``'s type.

    ``op_qualname`` is e.g. ``"fusion_kernels::rms_norm"``. On ROCm builds torch routes HIP
    tensors through the CUDA dispatch key, so "cuda" devices check the CUDA key there too.
    """
    dtype = _device_type(device)
    ov = _current_override()
    if ov is not None and ov.kernels is not None:
        return dtype in ov.kernels and _op_defined(op_qualname)
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(dtype)
    if key is None or not _op_defined(op_qualname):
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(op_qualname, key)


def inductor_unavailable(device: torch.device | str | None = None) -> str | None:
    """Why ``torch.compile`` (Inductor) cannot generate code for ``device`` on this machine, or
    None when it can. On CPU Inductor writes C++ and needs a working C++ compiler (``CXX``, else
    g++): without one, every CPU compile fails, with or without the plugin. The examples ask here
    and run their models eagerly instead."""
    if _device_type(device) != "cpu":
        return None
    try:
        from torch._inductor import cpp_builder

        cpp_builder.get_cpp_compiler()
    except (ImportError, AttributeError):  # another torch: no way to ask, so assume it can
        return None
    except Exception as exc:  # torch._inductor.exc.InvalidCxxCompiler
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"torch.compile on CPU needs a C++ compiler ({first}); install g++ or set CXX"
    return None


def _op_defined(op_qualname: str) -> bool:
    ns, name = op_qualname.split("::")
    return hasattr(getattr(torch.ops, ns), name)


def build_kind() -> str:
    """Which GPU code the JIT build adds to the CPU kernels: "cuda", "rocm" or "cpu" (none)."""
    if getattr(torch.version, "hip", None):
        return "rocm"
    if getattr(torch.version, "cuda", None):
        return "cuda"
    return "cpu"


def _split_archs(value: str) -> list[str]:
    return [a for a in value.replace(",", " ").replace(";", " ").split() if a]


def cuda_build_archs() -> list[str]:
    """CUDA targets for the JIT build: ``FUSION_KERNELS_CUDA_ARCHS`` ("8.0 9.0" or "sm_80,sm_90"),
    else the architectures of the visible GPUs."""
    env = os.environ.get("FUSION_KERNELS_CUDA_ARCHS")
    archs: list[str] = []
    if env:
        for a in _split_archs(env):
            archs.append(str(parse_cuda_arch(a.lower().replace("+ptx", ""))))
    elif torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            archs.append(f"sm_{major}{minor}")
    return sorted(set(archs), key=_sm_number)


def rocm_build_archs() -> list[str]:
    """ROCm targets for the JIT build: ``FUSION_KERNELS_ROCM_ARCHS`` ("gfx942 gfx90a"), else the
    visible GPUs' gcnArchName."""
    env = os.environ.get("FUSION_KERNELS_ROCM_ARCHS") or os.environ.get("PYTORCH_ROCM_ARCH")
    if env:
        return sorted(set(_split_archs(env)))
    archs = set()
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            name = getattr(torch.cuda.get_device_properties(i), "gcnArchName", "")
            if name:
                archs.add(name.split(":")[0])
    return sorted(archs)
