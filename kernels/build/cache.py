# SPDX-License-Identifier: Apache-2.0
"""The JIT cache: one directory per (torch version, Python ABI, target, source hash) in a user
cache directory (never in the package), filled under a file lock because several processes
(e.g. torchrun ranks) may start at once."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from fusion_kernels.build import recipe
from fusion_kernels.build.sources import LIB_NAME, Target, source_hash

log = logging.getLogger("fusion_kernels")

CACHE_ENV = "FUSION_KERNELS_CACHE_DIR"


def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fusion_kernels"


def cache_dir_for(target: Target) -> Path:
    tv = torch.__version__.replace("+", "_")
    py = sysconfig.get_config_var("SOABI") or f"py{sys.version_info.major}{sys.version_info.minor}"
    return cache_root() / f"torch{tv}-{py}-{target.tag}-{source_hash()}"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def ensure_built(target: Target) -> tuple[Path, bool]:
    """The cached library for ``target``, building it under a file lock if needed.

    Returns (path, built_now)."""
    out = cache_dir_for(target)
    lib = out / LIB_NAME
    if lib.is_file():
        return lib, False
    with _file_lock(out.with_name(out.name + ".lock")):
        if lib.is_file():  # another process finished it while we waited
            return lib, False
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        log.warning("fusion_kernels: building the op library for %s (first use; cached in %s)...", target.tag, out)
        start = time.perf_counter()
        recipe.build(target, tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        log.warning("fusion_kernels: built in %.1f s", time.perf_counter() - start)
        return lib, True
