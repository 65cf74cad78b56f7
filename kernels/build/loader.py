# SPDX-License-Identifier: Apache-2.0
"""Loading the library once per process, and what happened when it was asked for.

Loading prefers a prebuilt library shipped in the wheel that matches the devices present, then a
cached or fresh JIT build, and degrades to "no ops" with the reason recorded when neither works.
A failure is final for the process: one attempt, one warning.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from pathlib import Path

import torch

from fusion_kernels import platform
from fusion_kernels.build import cache, toolchain
from fusion_kernels.build.cache import RememberedBuildError
from fusion_kernels.build.errors import BuildError
from fusion_kernels.build.sources import LIB_NAME, Target, source_hash

log = logging.getLogger("fusion_kernels")

DISABLE_ENV = "FUSION_KERNELS_DISABLE"
NO_JIT_ENV = "FUSION_KERNELS_NO_JIT"  # never compile at run time (serving images): prebuilt or nothing
NO_PREBUILT_ENV = "FUSION_KERNELS_NO_PREBUILT"
#: Set on the log record of the one warning that says the library is unavailable (the CLI,
#: which prints the reason itself, filters it out).
FAILURE_RECORD_ATTR = "fusion_kernels_unavailable"


# ---------------------------------------------------------------------------------------------
# Prebuilt libraries (wheels)


def prebuilt_root() -> Path:
    return Path(__file__).resolve().parent.parent / "_prebuilt"


def find_prebuilt(kind: str, arch: str | None) -> tuple[Path | None, str]:
    """A prebuilt library for GPU code ``kind`` ("cpu": none needed) and device ``arch`` (None:
    any GPU), and a line saying why none matched.

    Every library holds the CPU kernels, so "cpu" takes any of them; "cuda" needs machine code
    for the GPU's arch (or PTX of an older one), "rocm" its gfx arch. The library's stable-ABI
    level must not be newer than this torch.
    """
    root = prebuilt_root()
    if not root.is_dir():
        return None, "no prebuilt libraries in this installation"
    torch_version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    seen = []
    for d in sorted(root.iterdir()):
        manifest_file = d / "manifest.json"
        if not (d / LIB_NAME).is_file() or not manifest_file.is_file():
            continue
        m = json.loads(manifest_file.read_text())
        seen.append(d.name)
        need = tuple(int(p) for p in m.get("torch_target_version", "99.0").split("."))
        if torch_version < need:
            continue
        archs = m.get("archs", [])
        if kind == "cpu":
            return d / LIB_NAME, ""
        if m.get("target") != kind:
            continue
        if arch is None or arch in archs or (kind == "cuda" and (_sass_runs(archs, arch) or _ptx_covers(archs, arch))):
            return d / LIB_NAME, ""
    return None, f"no prebuilt library for {kind} {arch or ''}".rstrip() + f" (have: {', '.join(seen) or 'none'})"


def _cuda_archs(archs: list[str]) -> list[platform.CudaArch]:
    out = []
    for a in archs:
        try:
            out.append(platform.parse_cuda_arch(a))
        except ValueError:
            pass
    return out


def _sass_runs(archs: list[str], arch: str) -> bool:
    """Machine code in the library for the device's arch: its own, or an arch- or
    family-specific build that runs on it (sm_100a on sm_100, sm_100f on sm_103)."""
    try:
        device = platform.parse_cuda_arch(arch)
    except ValueError:
        return False
    return any(a.runs_on(device) for a in _cuda_archs(archs))


def _ptx_covers(archs: list[str], arch: str) -> bool:
    # The newest unsuffixed arch is also shipped as PTX, which the driver can compile for newer
    # GPUs (arch- and family-specific PTX is not: cuda_gencode_flags).
    plain = [a for a in _cuda_archs(archs) if not a.suffix]
    try:
        device = platform.parse_cuda_arch(arch)
    except ValueError:
        return False
    if not plain or device.suffix:
        return False
    newest = max(plain, key=lambda a: (a.major, a.minor))
    return (device.major, device.minor) >= (newest.major, newest.minor)


def needed_gpu_code() -> tuple[str, str | None]:
    """The GPU code a library needs here, as (kind, arch): the kind of the GPUs present, not of
    torch's build ("cpu" for a CUDA torch on a machine without a GPU: the CPU kernels are what it
    can use)."""
    arch = platform.visible_gpu_arch()
    return (platform.build_kind(), arch) if arch is not None else ("cpu", None)


# ---------------------------------------------------------------------------------------------
# Loading


@dataclasses.dataclass
class LibraryState:
    """What happened when the library was asked for (see :func:`load`)."""

    status: str = "not_loaded"  # "not_loaded", "loaded", "disabled", "failed"
    source: str | None = None  # "prebuilt", "jit-cache", "jit-build", "already-loaded"
    path: str | None = None
    target: str | None = None
    reason: str | None = None  # why disabled/failed: one line
    gpu_note: str | None = None  # why GPU kernels are absent, if they are
    build_seconds: float | None = None
    source_hash: str | None = None  # of the sources the library was built from
    fix: str | None = None  # how to get a library when this machine could not build one
    log: str | None = None  # the full output of a failed build

    @property
    def loaded(self) -> bool:
        return self.status == "loaded"

    @property
    def identity(self) -> str:
        """What the library is (status, target, sources), not how it was obtained: what a
        compile cache key needs, equal for a fresh build and the same library from the cache."""
        return f"{self.status};{self.target};{self.source_hash}"


_state = LibraryState()
_error: Exception | None = None
_lock = threading.Lock()


def state() -> LibraryState:
    return _state


def _library_already_present() -> bool:
    return hasattr(torch.ops.fusion_kernels, "rms_norm")


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def load(strict: bool = False) -> LibraryState:
    """Build (if needed) and load the library once per process; never raises unless ``strict``.

    A failure is recorded, warned about once and not retried in this process. Call it before
    Dynamo traces anything (fusion_passes does, when a pass is created).
    """
    global _state, _error
    with _lock:
        if _state.status == "not_loaded":
            if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
                _state = LibraryState(status="disabled", reason=f"{DISABLE_ENV}={os.environ[DISABLE_ENV]}")
                return _state
            try:
                _state, _error = _load_unlocked(), None
            except Exception as exc:  # degrade: no ops, a recorded reason
                # The state keeps what is wrong (reports show it); the one warning adds the fix
                # and the log file.
                if isinstance(exc, BuildError):
                    failed = LibraryState("failed", reason=_one_line(exc.short), fix=exc.hint or None, log=exc.log)
                    message = str(exc)
                else:
                    failed = LibraryState("failed", reason=_one_line(f"{type(exc).__name__}: {exc}"))
                    message = failed.reason
                _state, _error = failed, exc
                if isinstance(exc, RememberedBuildError):
                    message += " (Not retried: it failed before with this toolchain; `python -m fusion_kernels build` retries.)"
                log.warning("fusion_kernels: %s", message, extra={FAILURE_RECORD_ATTR: True})
        if strict and _state.status == "failed" and _error is not None:
            raise _error
        return _state


def _load_unlocked() -> LibraryState:
    from fusion_kernels import fake

    if _library_already_present():
        fake.register_all()
        return LibraryState(status="loaded", source="already-loaded", reason=None)

    kind, arch = needed_gpu_code()
    prebuilt, why_not = find_prebuilt(kind, arch)
    if prebuilt is not None and os.environ.get(NO_PREBUILT_ENV, "") in ("", "0"):
        try:
            torch.ops.load_library(str(prebuilt))
            fake.register_all()
            m = json.loads((prebuilt.parent / "manifest.json").read_text())
            tag = Target(m["target"], tuple(m.get("archs", ()))).tag
            return LibraryState("loaded", "prebuilt", str(prebuilt), tag, source_hash=m.get("source_hash"))
        except OSError as exc:
            why_not = f"prebuilt library {prebuilt} did not load ({exc})"
            log.warning("fusion_kernels: %s; trying a JIT build", why_not)
    if os.environ.get(NO_JIT_ENV, "") not in ("", "0"):
        raise BuildError(
            f"{why_not}, and JIT builds are off ({NO_JIT_ENV}=1)",
            f"Install a wheel prebuilt for this device, or unset {NO_JIT_ENV}.",
        )

    target, gpu_note = toolchain.jit_target()
    start = time.perf_counter()
    path, built = cache.ensure_built(target)
    seconds = time.perf_counter() - start if built else None
    torch.ops.load_library(str(path))
    fake.register_all()
    return LibraryState(
        status="loaded",
        source="jit-build" if built else "jit-cache",
        path=str(path),
        target=target.tag,
        gpu_note=gpu_note,
        build_seconds=seconds,
        source_hash=source_hash(),
    )
