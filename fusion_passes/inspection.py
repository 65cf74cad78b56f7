# SPDX-License-Identifier: Apache-2.0
"""See what the plugin did: depyf dumps, post-grad graphs before/after the pass, a report."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import warnings
from collections.abc import Iterator, Sequence
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
def caches_off() -> Iterator[None]:
    """Inductor's FX graph cache and AOTAutograd's cache off, so every graph is compiled and
    passes through the post-grad stage (a cache hit skips it, and its dumps with it).

    Not ``force_disable_caches``: that also turns off Dynamo's profile-guided recompilation
    state, with a warning, and dumps need only these two caches off.
    """
    import torch._functorch.config as functorch_config

    with torch._inductor.config.patch(fx_graph_cache=False), functorch_config.patch(enable_autograd_cache=False):
        yield


@contextlib.contextmanager
def depyf_dumps(directory: str | os.PathLike) -> Iterator[None]:
    """``depyf.prepare_debug`` with caches off (else the post-grad stage never runs and its dump
    is missing), and, on torch >= 2.12, its ``load_by_key_path`` hook made to forward the keyword
    arguments newer torch passes (``set_sys_modules``, used when loading Triton code)."""
    import depyf  # imported lazily: only inspection needs it
    from torch._inductor.codecache import PyCodeCache

    with contextlib.ExitStack() as stack:
        with warnings.catch_warnings():
            # depyf reminds every user that one run covers only the branches taken; inspect's
            # output says what was compiled, so the reminder is noise here.
            warnings.filterwarnings("ignore", message=".*make sure the code runs multiple times", category=UserWarning)
            stack.enter_context(depyf.prepare_debug(str(directory)))
        stack.enter_context(caches_off())
        if _torch_at_least(2, 12):
            stack.enter_context(_forwarding_load_hook(PyCodeCache))
        yield


@contextlib.contextmanager
def _forwarding_load_hook(PyCodeCache) -> Iterator[None]:
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


def write_depyf_index(directory: str | os.PathLike, passes: Sequence[FusionPass]) -> Path | None:
    """``INDEX.txt`` in a depyf dump directory: for each compiled function (depyf names its files
    ``__compiled_fn_<n>.*``), whether it was compiled with the plugin, by which FusionPass and
    with what result. Returns its path (None when there is no dump)."""
    d = Path(directory)
    names = sorted({m.group(1) for p in d.glob("__compiled_fn_*") if (m := re.match(r"(__compiled_fn_\d+)\.", p.name))},
                   key=lambda n: int(n.rsplit("_", 1)[1]))  # fmt: skip
    if not names:
        return None
    lines = [
        "Which compile each depyf dump belongs to. Files are named __compiled_fn_<n>.<stage>.py:",
        "AFTER_POST_GRAD is the graph after every post-grad pass (ours included), kernel_<k> the",
        "Inductor output code, BEFORE_PRE_GRAD / Forward_graph the graphs before Inductor.",
        "",
    ]
    for name in names:
        seen = [(i, g) for i, p in enumerate(passes) for g in p.report.graphs if g.compiled_fn == name]
        if not seen:
            lines.append(f"{name}  without the plugin (no FusionPass ran on it)")
            continue
        for i, g in seen:
            what = f"{g.fused} site(s) fused, {g.refused} refused"
            lines.append(f"{name}  with the plugin: FusionPass {i}, its graph {g.index}: {what}")
    path = d / "INDEX.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


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
      Inductor output code ``*.kernel_*.py``), and ``INDEX.txt``: which compile each belongs to;
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
    ctx = depyf_dumps(out / "depyf") if use_depyf else caches_off()
    with ctx:
        compiled(*args)
    write_report(fusion_pass.report, out)
    if use_depyf:
        write_depyf_index(out / "depyf", [fusion_pass])
    log.info("fusion_passes: inspection written to %s", out)
    return fusion_pass.report
