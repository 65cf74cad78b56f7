# SPDX-License-Identifier: Apache-2.0
"""See what the plugin did: depyf dumps, post-grad graphs before/after the pass, a report."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from fusion_passes.graph_pass import FusionPass
from fusion_passes.reporting import Report

log = logging.getLogger("fusion_passes")


def _torch_at_least(major: int, minor: int) -> bool:
    v = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    return v >= (major, minor)


@contextlib.contextmanager
def depyf_dumps(directory: str | os.PathLike) -> Iterator[None]:
    """``depyf.prepare_debug`` with caches disabled (else the post-grad stage never runs and its
    dump is missing), and, on torch >= 2.12, its ``load_by_key_path`` hook made to forward the
    keyword arguments newer torch passes (``set_sys_modules``, used when loading Triton code)."""
    import depyf  # imported lazily: only inspection needs it
    from torch._inductor.codecache import PyCodeCache

    with torch._inductor.config.patch(force_disable_caches=True), depyf.prepare_debug(str(directory)):
        if not _torch_at_least(2, 12):
            yield
            return
        from depyf.explain.global_variables import data

        depyf_hook = PyCodeCache.load_by_key_path
        original = data["unpatched_load_by_key_path"]

        def load_by_key_path(key, path, linemap=None, attrs=None, **extra):
            if not extra:
                return depyf_hook(key, path, linemap, attrs)
            data["unpatched_load_by_key_path"] = lambda k, p, lm=None, at=None: original(k, p, lm, at, **extra)
            try:
                return depyf_hook(key, path, linemap, attrs)
            finally:
                data["unpatched_load_by_key_path"] = original

        PyCodeCache.load_by_key_path = load_by_key_path
        try:
            yield
        finally:
            PyCodeCache.load_by_key_path = depyf_hook


def write_report(report: Report, directory: str | os.PathLike) -> None:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "report.txt").write_text(str(report) + "\n")
    (d / "report.json").write_text(json.dumps(report.to_dict(), indent=1, default=str) + "\n")


def inspect(
    model: Any,
    *args: Any,
    out_dir: str | os.PathLike,
    native: str = "auto",
    use_depyf: bool = True,
    **compile_kwargs: Any,
) -> Report:
    """Compile ``model`` with the plugin, run it once on ``args`` and write into ``out_dir``:

    * ``graphs/graph_<n>_before.py`` / ``graph_<n>_after.py``: each post-grad graph around the pass;
    * ``depyf/``: depyf's dumps (Dynamo bytecode, AOT graphs, ``*.AFTER_POST_GRAD.*``, the
      Inductor output code ``*.kernel_*.py``);
    * ``report.txt`` / ``report.json``: per site the pattern and fused op or the refusal reason,
      totals, the inactive patterns and why.

    Resets Dynamo first (a function compiled earlier in this process would otherwise be served
    from Dynamo's cache without running the pass) and disables Inductor's caches while compiling.
    Returns the report.
    """
    from fusion_passes.api import compile as fp_compile

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fusion_pass = FusionPass(native=native, dump_dir=out / "graphs")
    torch._dynamo.reset()
    compiled = fp_compile(model, fusion_pass=fusion_pass, **compile_kwargs)
    ctx = depyf_dumps(out / "depyf") if use_depyf else torch._inductor.config.patch(force_disable_caches=True)
    with ctx:
        compiled(*args)
    write_report(fusion_pass.report, out)
    log.info("fusion_passes: inspection written to %s", out)
    return fusion_pass.report
