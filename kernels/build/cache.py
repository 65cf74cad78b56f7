# SPDX-License-Identifier: Apache-2.0
"""The JIT cache: one directory per (torch version, Python ABI, target, source hash) in a user
cache directory (never in the package), filled under a file lock because several processes
(e.g. torchrun ranks) may start at once.

A failed build is remembered next to that directory, with the toolchain's identity: later
processes do not retry it (each would print the same failure and waste the same time) until a
tool changes, the sources change, or ``python -m fusion_kernels build`` retries it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from fusion_kernels.build import recipe, toolchain
from fusion_kernels.build.errors import BuildError
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


def _sibling(out: Path, suffix: str) -> Path:
    return out.with_name(out.name + suffix)


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


class RememberedBuildError(BuildError):
    """A build that failed before with the same sources and toolchain; not tried again."""


def remembered_failure(out: Path, toolchain_id: str) -> RememberedBuildError | None:
    """The failure recorded for the build directory ``out`` under this toolchain, if any."""
    try:
        record = json.loads(_sibling(out, ".failed.json").read_text())
    except (OSError, ValueError):
        return None
    if record.get("toolchain") != toolchain_id:
        return None
    return RememberedBuildError(record.get("reason", "it failed before"), record.get("hint", ""), record.get("log"))


def _remember(out: Path, toolchain_id: str, error: BuildError) -> None:
    record = {"toolchain": toolchain_id, "reason": error.reason, "hint": error.hint, "log": error.log}
    with contextlib.suppress(OSError):
        _sibling(out, ".failed.json").write_text(json.dumps(record, indent=2) + "\n")


def _forget(out: Path) -> None:
    for suffix in (".failed.json", ".build.log"):
        _sibling(out, suffix).unlink(missing_ok=True)


def _remove_leftovers(out: Path) -> None:
    # Under the lock nobody else builds into this key: any temporary directory is a leftover of
    # a process that was killed mid-build.
    for tmp in out.parent.glob(out.name + ".tmp*"):
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_built(target: Target, force: bool = False, jobs: int | None = None) -> tuple[Path, bool]:
    """The cached library for ``target``, building it under a file lock if needed.

    Returns (path, built_now). A build that failed before with the same toolchain raises
    :class:`RememberedBuildError` without running again, unless ``force``."""
    out = cache_dir_for(target)
    lib = out / LIB_NAME
    if lib.is_file():
        return lib, False
    toolchain_id = toolchain.identity(target)
    if not force and (error := remembered_failure(out, toolchain_id)) is not None:
        raise error
    with _file_lock(_sibling(out, ".lock")):
        if lib.is_file():  # another process finished it while we waited
            return lib, False
        if not force and (error := remembered_failure(out, toolchain_id)) is not None:
            raise error  # another process failed while we waited
        _remove_leftovers(out)
        log_path = _sibling(out, ".build.log")
        tmp = _sibling(out, f".tmp{os.getpid()}")
        start = time.perf_counter()
        try:
            recipe.preflight(target, log_path)  # a missing tool: say so, without "building..." first
            log.warning("fusion_kernels: building the op library for %s (first use; cached in %s)...", target.tag, out)
            recipe.build(target, tmp, jobs=jobs, log_path=log_path)
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        except BuildError as error:
            _remember(out, toolchain_id, error)
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _forget(out)
        log.warning("fusion_kernels: built in %.1f s", time.perf_counter() - start)
        return lib, True
