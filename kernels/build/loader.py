# SPDX-License-Identifier: Apache-2.0
"""Loading the library once per process, and what happened when it was asked for.

Loading prefers a prebuilt library shipped in the wheel that matches the device, then a cached
or fresh JIT build, and degrades to "no ops" with the reason recorded when neither works.
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
from fusion_kernels.build.errors import BuildError
from fusion_kernels.build.sources import LIB_NAME, Target

log = logging.getLogger("fusion_kernels")

DISABLE_ENV = "FUSION_KERNELS_DISABLE"
NO_JIT_ENV = "FUSION_KERNELS_NO_JIT"  # never compile at run time (serving images): prebuilt or nothing
NO_PREBUILT_ENV = "FUSION_KERNELS_NO_PREBUILT"


# ---------------------------------------------------------------------------------------------
# Prebuilt libraries (wheels)


def prebuilt_root() -> Path:
    return Path(__file__).resolve().parent.parent / "_prebuilt"


def find_prebuilt(kind: str, arch: str | None) -> tuple[Path | None, str]:
    """A prebuilt library for this torch build ``kind`` and device ``arch`` (None: any GPU),
    and a line saying why none matched.

    Every library holds the CPU kernels, so a CPU-only torch takes any of them; a CUDA torch
    needs machine code for the GPU's arch (or PTX of an older one), a ROCm torch its gfx arch.
    The library's stable-ABI level must not be newer than this torch.
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
        if arch is None or arch in archs or (kind == "cuda" and _ptx_covers(archs, arch)):
            return d / LIB_NAME, ""
    return None, f"no prebuilt library for {kind} {arch or ''} (have: {', '.join(seen) or 'none'})"


def _ptx_covers(archs: list[str], arch: str) -> bool:
    # The newest arch is also shipped as PTX, which the driver can compile for newer GPUs.
    if not archs or not arch.startswith("sm_") or not archs[-1].startswith("sm_"):
        return False
    return int(arch[3:]) >= int(archs[-1][3:])


# ---------------------------------------------------------------------------------------------
# Loading


@dataclasses.dataclass
class LibraryState:
    """What happened when the library was asked for (see :func:`load`)."""

    status: str = "not_loaded"  # "not_loaded", "loaded", "disabled", "failed"
    source: str | None = None  # "prebuilt", "jit-cache", "jit-build", "already-loaded"
    path: str | None = None
    target: str | None = None
    reason: str | None = None  # why disabled/failed
    gpu_note: str | None = None  # why GPU kernels are absent, if they are
    build_seconds: float | None = None

    @property
    def loaded(self) -> bool:
        return self.status == "loaded"


_state = LibraryState()
_lock = threading.Lock()


def state() -> LibraryState:
    return _state


def _library_already_present() -> bool:
    return hasattr(torch.ops.fusion_kernels, "rms_norm")


def load(strict: bool = False) -> LibraryState:
    """Build (if needed) and load the library once per process; never raises unless ``strict``.

    Call it before Dynamo traces anything (fusion_passes does, when a pass is created).
    """
    global _state
    with _lock:
        if _state.status in ("loaded", "disabled"):
            return _state
        if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
            _state = LibraryState(status="disabled", reason=f"{DISABLE_ENV}={os.environ[DISABLE_ENV]}")
            return _state
        try:
            _state = _load_unlocked()
        except Exception as exc:  # degrade: no ops, a recorded reason
            _state = LibraryState(status="failed", reason=f"{type(exc).__name__}: {exc}")
            log.warning("fusion_kernels: the op library is unavailable: %s", _state.reason)
            if strict:
                raise
        return _state


def _load_unlocked() -> LibraryState:
    from fusion_kernels import fake

    if _library_already_present():
        fake.register_all()
        return LibraryState(status="loaded", source="already-loaded", reason=None)

    kind = platform.build_kind()
    arch = platform.visible_gpu_arch()
    prebuilt, why_not = find_prebuilt(kind, arch)
    if prebuilt is not None and os.environ.get(NO_PREBUILT_ENV, "") in ("", "0"):
        try:
            torch.ops.load_library(str(prebuilt))
            fake.register_all()
            m = json.loads((prebuilt.parent / "manifest.json").read_text())
            tag = Target(m["target"], tuple(m.get("archs", ()))).tag
            return LibraryState("loaded", "prebuilt", str(prebuilt), tag)
        except OSError as exc:
            why_not = f"prebuilt library {prebuilt} did not load ({exc})"
            log.warning("fusion_kernels: %s; trying a JIT build", why_not)
    if os.environ.get(NO_JIT_ENV, "") not in ("", "0"):
        raise BuildError(f"{why_not}, and JIT builds are off ({NO_JIT_ENV}=1)")

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
    )
