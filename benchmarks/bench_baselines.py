# SPDX-License-Identifier: Apache-2.0
"""The Inductor baselines: the plain-torch function compiled the ways a user would compile it.

Per cell the benchmark takes the best of these (``BASELINES``), and records which one won:

* ``default``                     ``torch.compile`` with static shapes, compiled for the cell's T;
* ``max-autotune-no-cudagraphs``  the same with Inductor's autotuning (minutes of compiling per
                                  cell; ``--autotune-tokens`` limits it to some token counts);
* ``dynamic``                     one compile per case and H with the token dim marked dynamic
                                  (``torch._dynamo.mark_dynamic``), traced at T = ``DYNAMIC_HINT_T``
                                  and reused for every T, as a server with varying batch sizes
                                  runs it. Dynamo specializes sizes 0 and 1, so T = 1 gets its own
                                  compile there, as it would in a model.

Compiles run first in a pool of worker processes that share Inductor's on-disk caches; the
timing process then mostly loads them.
"""

from __future__ import annotations

import multiprocessing as mp
import sys

import torch
from bench_cases import Cell, native_fn
from bench_timing import make_inputs

# name: (torch.compile mode, token dim dynamic)
BASELINES = {
    "default": ("default", False),
    "max-autotune-no-cudagraphs": ("max-autotune-no-cudagraphs", False),
    "dynamic": ("default", True),
}
QUICK_BASELINES = ("default",)
AUTOTUNE = "max-autotune-no-cudagraphs"
DYNAMIC_HINT_T = 16384  # the token count a dynamic compile is traced at (a server's largest batch)


def parse_baselines(text: str) -> tuple[str, ...]:
    names = tuple(n for n in text.split(",") if n)
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; known: {', '.join(BASELINES)}")
    return names


def baselines_for(cell: Cell, names, autotune_tokens: set[int] | None = None) -> tuple[str, ...]:
    """The baselines timed for a cell: max-autotune only at ``autotune_tokens`` when given."""
    if autotune_tokens is None:
        return tuple(names)
    return tuple(n for n in names if n != AUTOTUNE or cell.tokens in autotune_tokens)


def compile_native(cell: Cell, mode: str):
    """The plain-torch function compiled with static shapes in ``mode``."""
    torch._dynamo.config.cache_size_limit = 1 << 12
    kw = {} if mode == "default" else {"mode": mode}
    return torch.compile(native_fn(cell), dynamic=False, **kw)


def compile_dynamic(case: str, hidden: int, mode: str = "default"):
    """The plain-torch function compiled once for a case and H with a dynamic token dim: traced
    here at T = DYNAMIC_HINT_T, so later calls at any T >= 2 reuse that compile."""
    torch._dynamo.config.cache_size_limit = 1 << 12
    kw = {} if mode == "default" else {"mode": mode}
    fn = torch.compile(native_fn(Cell(case, hidden, DYNAMIC_HINT_T)), **kw)
    xs, rs, w, s = make_inputs(Cell(case, hidden, DYNAMIC_HINT_T), 1)
    torch._dynamo.mark_dynamic(xs[0], 0)
    torch._dynamo.mark_dynamic(rs[0], 0)
    fn(xs[0], rs[0], w, s)
    del xs, rs
    return fn


class Baselines:
    """The compiled baselines of a run, by cell; dynamic compiles kept per (case, H, mode)."""

    def __init__(self, names, autotune_tokens: set[int] | None = None):
        self.names = tuple(names)
        self.autotune_tokens = autotune_tokens
        self._dynamic: dict[tuple[str, int, str], object] = {}

    def fns(self, cell: Cell) -> dict[str, object]:
        out = {}
        for name in baselines_for(cell, self.names, self.autotune_tokens):
            mode, dynamic = BASELINES[name]
            if dynamic:
                key = (cell.case, cell.hidden, mode)
                if key not in self._dynamic:  # keep only the current (case, H)'s compiles
                    self._dynamic = {k: v for k, v in self._dynamic.items() if k[:2] == key[:2]}
                    self._dynamic[key] = compile_dynamic(cell.case, cell.hidden, mode)
                out[name] = self._dynamic[key]
            else:
                out[name] = compile_native(cell, mode)
        return out


def warm_jobs(cell_list: list[Cell], names, autotune_tokens=None) -> list[tuple]:
    """One job per cell for the static baselines, one per (case, H) for each dynamic one (its
    compile, then a call at every T of the run)."""
    jobs, dynamic = [], {}
    for cell in cell_list:
        static = tuple(n for n in baselines_for(cell, names, autotune_tokens) if not BASELINES[n][1])
        if static:
            jobs.append(("static", cell, static))
        for n in names:
            if BASELINES[n][1]:
                dynamic.setdefault((cell.case, cell.hidden, n), []).append(cell.tokens)
    jobs += [
        ("dynamic", Cell(case, hidden, DYNAMIC_HINT_T), (n, tuple(ts))) for (case, hidden, n), ts in dynamic.items()
    ]
    return jobs


def _warm_worker(job):
    """Pool worker: compile (and autotune) one job's baselines into the shared caches."""
    kind, cell, what = job
    try:
        import fusion_kernels

        fusion_kernels.load(strict=True)
        if kind == "static":
            xs, rs, w, s = make_inputs(cell, 1)
            for name in what:
                compile_native(cell, BASELINES[name][0])(xs[0], rs[0], w, s)
        else:
            name, tokens = what
            fn = compile_dynamic(cell.case, cell.hidden, BASELINES[name][0])
            for t in tokens:
                xs, rs, w, s = make_inputs(Cell(cell.case, cell.hidden, t), 1)
                fn(xs[0], rs[0], w, s)
        torch.cuda.synchronize()
        return None
    except Exception as exc:  # reported by the timing process, which compiles again
        return f"{kind} {cell}: {type(exc).__name__}: {exc}"


def warm_inductor(cell_list: list[Cell], names, workers: int, autotune_tokens=None) -> int:
    """Compile every baseline of the run in ``workers`` processes; returns the number of jobs."""
    jobs = warm_jobs(cell_list, names, autotune_tokens)
    if workers <= 1:
        for job in jobs:
            err = _warm_worker(job)
            if err:
                print("warm-up:", err, file=sys.stderr)
        return len(jobs)
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) as pool:
        for err in pool.imap_unordered(_warm_worker, jobs):
            if err:
                print("warm-up:", err, file=sys.stderr)
    return len(jobs)
