# SPDX-License-Identifier: Apache-2.0
"""Kernel benchmark: our fused op vs our two unfused ops vs Inductor vs eager, one run.

For every case (scheme x residual), hidden size and token count it times, side by side:

* ``fused``     our fused op (one kernel);
* ``unfused``   our rms_norm / fused_add_rms_norm followed by our quant op;
* ``inductor``  ``torch.compile`` of the same computation written in plain torch
                (fusion_passes.native_forms: F.rms_norm + the quant), compiled per shape, the
                better of the default and ``max-autotune-no-cudagraphs`` modes;
* ``eager``     the plain-torch function, uncompiled.

GPU time per call comes from CUDA-graph replay of many calls over rotating input sets (so no
call finds its inputs in L2), median over repeats. Every variant is checked against the
reference before it is timed. The device's copy bandwidth is measured in the same run, and each
result is reported as effective bandwidth (minimal bytes read + written / time) and as a
fraction of it. Inductor compiles run first in a pool of worker processes (they share the
on-disk caches); the timing process then only loads them.

    python benchmarks/bench_kernels.py --out results/            # full grid
    python benchmarks/bench_kernels.py --quick --out results/    # a few cells, default mode only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

import torch

FULL_T = [1, 16, 128, 1024, 4096, 16384]
QUICK_T = [1, 16, 4096, 16384]
CASES = [
    # name, scheme, residual, group
    ("static", "static", False, None),
    ("static+res", "static", True, None),
    ("per_token", "per_token", False, None),
    ("per_token+res", "per_token", True, None),
    ("group128", "group", False, 128),
    ("group128+res", "group", True, 128),
    ("group64", "group", False, 64),
    ("int8_static", "int8_static", False, None),
    ("int8_per_token", "int8_per_token", False, None),
]
INDUCTOR_MODES = ("default", "max-autotune-no-cudagraphs")
EPS = 1e-6
DTYPE = torch.bfloat16


@dataclasses.dataclass(frozen=True)
class Cell:
    case: str
    hidden: int
    tokens: int

    @property
    def spec(self):
        return next(c for c in CASES if c[0] == self.case)


def hidden_sizes(case: str, quick: bool) -> list[int]:
    group = "group" in case
    if quick:
        return [7168] if group else [8192]
    return [4096, 7168, 8192] if group else [4096, 8192]


def cells(quick: bool, only: list[str] | None) -> list[Cell]:
    out = []
    for name, *_ in CASES:
        if only and name not in only:
            continue
        for h in hidden_sizes(name, quick):
            for t in QUICK_T if quick else FULL_T:
                out.append(Cell(name, h, t))
    return out


# --- the computations ---------------------------------------------------------------------------


def native_fn(cell: Cell):
    """The plain-torch function Inductor compiles (and eager runs)."""
    from fusion_passes import native_forms as nf

    _, scheme, residual, group = cell.spec
    fp8 = torch.float8_e4m3fn

    def fn(x, r, w, s):
        if residual:
            x, r = nf.add_residual(x, r)
        y = nf.rms_norm_functional(x, w, EPS)
        if scheme == "static":
            out = (nf.quant_fp8_static(y, s, fp8),)
        elif scheme == "per_token":
            out = nf.quant_fp8_per_token(y, fp8)
        elif scheme == "group":
            out = nf.quant_fp8_per_group(y, group, fp8)
        elif scheme == "int8_static":
            out = (nf.quant_int8_static(y, s),)
        else:
            out = nf.quant_int8_per_token(y)
        return (*out, r) if residual else out

    return fn


def composed(cell: Cell, ns):
    """Norm op then quant op, from ``ns``: torch.ops.fusion_kernels (our unfused pair) or
    fusion_kernels.reference (the spec); both name their functions alike."""
    _, scheme, residual, group = cell.spec
    fp8 = torch.float8_e4m3fn

    def fn(x, r, w, s):
        if residual:
            y, r = ns.fused_add_rms_norm(x, r, w, EPS)
        else:
            y = ns.rms_norm(x, w, EPS)
        if scheme == "static":
            out = (ns.static_scaled_fp8_quant(y, s, fp8),)
        elif scheme == "per_token":
            out = ns.dynamic_per_token_scaled_fp8_quant(y, None, fp8)
        elif scheme == "group":
            out = ns.per_token_group_fp8_quant(y, group, False, False, fp8)
        elif scheme == "int8_static":
            out = (ns.static_scaled_int8_quant(y, s),)
        else:
            out = ns.dynamic_scaled_int8_quant(y)
        return (*out, r) if residual else out

    return fn


def ours_fns(cell: Cell):
    ops = torch.ops.fusion_kernels
    _, scheme, residual, group = cell.spec
    fp8 = torch.float8_e4m3fn

    def fused(x, r, w, s):
        if scheme == "static":
            return (
                ops.fused_add_rms_norm_static_fp8_quant(x, r, w, s, EPS, fp8)
                if residual
                else (ops.rms_norm_static_fp8_quant(x, w, s, EPS, fp8),)
            )
        if scheme == "per_token":
            return (
                ops.fused_add_rms_norm_dynamic_per_token_quant(x, r, w, EPS, fp8, None)
                if residual
                else ops.rms_norm_dynamic_per_token_quant(x, w, EPS, fp8, None)
            )
        if scheme == "group":
            return (
                ops.fused_add_rms_norm_per_token_group_quant(x, r, w, EPS, group, False, False, fp8)
                if residual
                else ops.rms_norm_per_token_group_quant(x, w, EPS, group, False, False, fp8)
            )
        if scheme == "int8_static":
            return (ops.rms_norm_static_int8_quant(x, w, s, EPS),)
        return ops.rms_norm_dynamic_per_token_quant(x, w, EPS, torch.int8, None)

    unfused = composed(cell, ops)

    return fused, unfused


def min_bytes(cell: Cell) -> int:
    _, scheme, residual, group = cell.spec
    t, h, e = cell.tokens, cell.hidden, DTYPE.itemsize
    n = t * h * e + t * h * 1 + h * e  # read x, write q, read w
    if residual:
        n += 2 * t * h * e  # read residual, write the new residual
    if scheme in ("per_token", "int8_per_token"):
        n += t * 4
    if scheme == "group":
        n += t * (h // group) * 4
    return n


# --- inputs and checks --------------------------------------------------------------------------


def input_sets(cell: Cell) -> int:
    """How many input sets the timer rotates over: enough that together they are 3x the L2, so
    no call finds its inputs there (at most 1000: T = 1 inputs stay L2-resident)."""
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    input_bytes = cell.tokens * cell.hidden * DTYPE.itemsize * (2 if cell.spec[2] else 1)
    return int(min(1000, max(2, math.ceil(3 * l2 / max(input_bytes, 1)))))


def make_inputs(cell: Cell, sets: int, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    t, h = cell.tokens, cell.hidden
    w = (1 + 0.2 * torch.randn(h, generator=g, device="cuda")).to(DTYPE)
    s = torch.tensor(4.0 / (127.0 if "int8" in cell.case else 448.0), device="cuda")
    xs = [torch.randn(t, h, generator=g, device="cuda").to(DTYPE) for _ in range(sets)]
    rs = [torch.randn(t, h, generator=g, device="cuda").to(DTYPE) for _ in range(sets)]
    return xs, rs, w, s


def check(cell: Cell, name: str, outs, x, r, w, s) -> None:
    """Compare a variant's outputs with the reference (the spec) before timing it."""
    from fusion_kernels import reference as ref
    from fusion_kernels.testing import SCALE_RTOL, assert_quant_close, quant_steps, scale_mask

    residual = cell.spec[2]
    *exp, r_new = composed(cell, ref)(x, r, w, s) + ((None,) if not residual else ())
    # Our kernels follow the spec's rounding points (1% of elements may sit on the other side of
    # a boundary); plain-torch code rounds elsewhere (checked more loosely below).
    ours = name in ("fused", "unfused")
    same_scale = None
    if len(exp) > 1:
        scales = outs[1].reshape(exp[1].shape).float()
        rtol = SCALE_RTOL[DTYPE] if ours else 0.01
        torch.testing.assert_close(scales, exp[1], rtol=rtol, atol=0, msg=f"{cell} {name} scales")
        same_scale = scale_mask(scales, exp[1], exp[0].shape)
    # Plain-torch F.rms_norm rounds once where the spec rounds twice: for INT8, whose steps are
    # finer, that moves up to ~7% of values by one step; FP8 groups of 128 reach ~6%.
    if ours:
        assert_quant_close(outs[0], exp[0], 0.01, what=f"{cell} {name} q", same_scale=same_scale)
    else:
        # The plain-torch variants only need to compute the same function: a dynamic INT8 scale
        # taken from a differently rounded row can move a value by two of its fine steps.
        steps = quant_steps(outs[0], exp[0])
        assert int(steps.max()) <= (2 if "int8" in cell.case else 1), f"{cell} {name}: {int(steps.max())} steps"
        assert float((steps > 0).float().mean()) <= 0.10, f"{cell} {name}: too many elements differ"
    if residual:
        torch.testing.assert_close(outs[-1], r_new, rtol=0, atol=0, msg=f"{cell} {name} residual")


# --- timing ------------------------------------------------------------------------------------


def copy_bandwidth() -> float:
    """Device-to-device copy bandwidth, bytes read + written per second (1 GiB buffers), after
    about 100 ms of copies: like the kernels' timer, not in the GPU's warm-up transient (a run
    that timed its copies after 3 warm-up copies once measured 11% below every other run)."""
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    start = time.perf_counter()
    while time.perf_counter() - start < 0.1:
        b.copy_(a)
        torch.cuda.synchronize()
    times = []
    for _ in range(20):
        st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        st.record()
        b.copy_(a)
        en.record()
        en.synchronize()
        times.append(st.elapsed_time(en) / 1e3)
    return 2 * n / statistics.median(times)


def time_graph(fn, xs, rs, w, s, est_seconds: float) -> float:
    """Median GPU seconds per call from CUDA-graph replays of many calls over rotating inputs,
    after a warm-up of about 100 ms of replays."""
    sets = len(xs)
    calls = int(min(1000, max(10, math.ceil(1e-3 / max(est_seconds, 1e-7)))))
    calls = max(calls, sets)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(3):
            fn(xs[i % sets], rs[i % sets], w, s)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    keep = [None] * sets  # outputs rotate over `sets` buffers too
    with torch.cuda.graph(graph):
        for c in range(calls):
            keep[c % sets] = fn(xs[c % sets], rs[c % sets], w, s)
    # Warm-up: replay for about 100 ms before timing. After a pause or heavy compute (the
    # reference check of a large cell) the first ~15 ms of replays ran up to 15% slower on an
    # H100, for every variant; a median over those would measure the transient, not the kernel.
    graph.replay()
    torch.cuda.synchronize()
    st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    st.record()
    graph.replay()
    en.record()
    en.synchronize()
    for _ in range(min(200, math.ceil(0.1 / max(st.elapsed_time(en) / 1e3, 1e-6)))):
        graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(15):
        st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        st.record()
        graph.replay()
        en.record()
        en.synchronize()
        times.append(st.elapsed_time(en) / 1e3 / calls)
    del graph, keep
    return statistics.median(times)


def compile_native(cell: Cell, mode: str):
    torch._dynamo.config.cache_size_limit = 1 << 12
    fn = native_fn(cell)
    kw = {} if mode == "default" else {"mode": mode}
    return torch.compile(fn, dynamic=False, **kw)


def _warm_worker(args):
    """Pool worker: compile (and autotune) one cell's Inductor variants into the shared caches."""
    cell, modes = args
    try:
        import fusion_kernels

        fusion_kernels.load(strict=True)
        xs, rs, w, s = make_inputs(cell, 1)
        for mode in modes:
            compile_native(cell, mode)(xs[0], rs[0], w, s)
        torch.cuda.synchronize()
        return None
    except Exception as exc:  # reported by the timing process, which compiles again
        return f"{cell}: {type(exc).__name__}: {exc}"


def modes_for(cell: Cell, modes, autotune_tokens: set[int] | None):
    """max-autotune only where asked (it costs minutes of compiling per cell)."""
    if autotune_tokens is None:
        return modes
    return tuple(m for m in modes if m == "default" or cell.tokens in autotune_tokens)


def warm_inductor(cell_list: list[Cell], modes, workers: int, autotune_tokens=None) -> None:
    jobs = [(c, modes_for(c, modes, autotune_tokens)) for c in cell_list]
    if workers <= 1:
        for job in jobs:
            _warm_worker(job)
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers) as pool:
        for err in pool.imap_unordered(_warm_worker, jobs):
            if err:
                print("warm-up:", err, file=sys.stderr)


def run(cell_list: list[Cell], modes, bandwidth: float, log, autotune_tokens=None, on_row=None) -> list[dict]:
    results = []
    for cell in cell_list:
        nbytes = min_bytes(cell)
        xs, rs, w, s = make_inputs(cell, input_sets(cell))
        est = nbytes / bandwidth + 2e-6
        fused, unfused = ours_fns(cell)
        variants = {"fused": fused, "unfused": unfused, "eager": native_fn(cell)}
        for mode in modes_for(cell, modes, autotune_tokens):
            variants[f"inductor[{mode}]"] = compile_native(cell, mode)
        row = {"case": cell.case, "hidden": cell.hidden, "tokens": cell.tokens, "bytes": nbytes}
        for name, fn in variants.items():
            outs = fn(xs[0], rs[0], w, s)
            check(cell, name, outs, xs[0], rs[0], w, s)
            row[name] = time_graph(fn, xs, rs, w, s, est)
        inductor = [row[k] for k in row if k.startswith("inductor[")]
        row["inductor"] = min(inductor)
        for k in ("fused", "unfused", "inductor", "eager"):
            row[f"{k}_pct"] = 100.0 * nbytes / row[k] / bandwidth
        row["speedup_vs_inductor"] = row["inductor"] / row["fused"]
        results.append(row)
        if on_row is not None:
            on_row(results)
        log(
            f"{cell.case:15s} H={cell.hidden:5d} T={cell.tokens:6d}  fused {row['fused'] * 1e6:8.2f} us "
            f"({row['fused_pct']:5.1f}%)  unfused {row['unfused'] * 1e6:8.2f}  inductor {row['inductor'] * 1e6:8.2f} "
            f"({row['inductor_pct']:5.1f}%)  eager {row['eager'] * 1e6:8.2f}  x{row['speedup_vs_inductor']:.2f}"
        )
        del xs, rs
        torch.cuda.empty_cache()
    return results


def summarize(results: list[dict], bandwidth: float) -> dict:
    ratios = [r["speedup_vs_inductor"] for r in results]
    geomean = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
    worst = min(results, key=lambda r: r["speedup_vs_inductor"])
    return {
        "cells": len(results),
        "geomean_inductor_over_ours": geomean,
        "cells_ours_ge_0.97x_inductor": sum(x >= 0.97 for x in ratios),
        "worst_cell": {k: worst[k] for k in ("case", "hidden", "tokens", "speedup_vs_inductor")},
        "T16384_cells_ge_95pct": sum(r["fused_pct"] >= 95 for r in results if r["tokens"] == 16384),
        "T16384_cells": sum(r["tokens"] == 16384 for r in results),
        "T4096_cells_ge_90pct": sum(r["fused_pct"] >= 90 for r in results if r["tokens"] == 4096),
        "T4096_cells": sum(r["tokens"] == 4096 for r in results),
        "small_T_cells_le_3us": sum(r["fused"] <= 3e-6 for r in results if r["tokens"] <= 16),
        "small_T_cells": sum(r["tokens"] <= 16 for r in results),
        "copy_bandwidth_TBps": bandwidth / 1e12,
    }


def markdown(results: list[dict]) -> str:
    lines = [
        "| case | H | T | fused µs | % copy BW | unfused µs | Inductor µs | % copy BW | eager µs | Inductor / fused |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['case']} | {r['hidden']} | {r['tokens']} | {r['fused'] * 1e6:.2f} | {r['fused_pct']:.1f} | "
            f"{r['unfused'] * 1e6:.2f} | {r['inductor'] * 1e6:.2f} | {r['inductor_pct']:.1f} | {r['eager'] * 1e6:.2f} | "
            f"{r['speedup_vs_inductor']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["case"], r["hidden"]) for r in results}, key=lambda k: ([c[0] for c in CASES].index(k[0]), k[1]))
    cols = 4
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (case, hidden) in zip(axes.flat, keys):
        rs = sorted((r for r in results if r["case"] == case and r["hidden"] == hidden), key=lambda r: r["tokens"])
        ts = [r["tokens"] for r in rs]
        ax.plot(ts, [r["fused_pct"] for r in rs], "o-", label="fusion_kernels fused")
        ax.plot(ts, [r["inductor_pct"] for r in rs], "s--", label="Inductor (best mode)")
        ax.plot(ts, [r["unfused_pct"] for r in rs], ":", color="gray", label="ours unfused")
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 105)
        ax.set_title(f"{case}, H={hidden}", fontsize=9)
        ax.set_xlabel("tokens")
        ax.set_ylabel("% of copy bandwidth")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def merge(dirs: list[Path], out: Path) -> None:
    cells: dict[tuple, dict] = {}
    metas = []
    for d in dirs:
        data = json.loads((d / "bench.json").read_text())
        metas.append(data["meta"])
        for row in data["results"]:
            cells[(row["case"], row["hidden"], row["tokens"])] = row
    order = [c[0] for c in CASES]
    results = sorted(cells.values(), key=lambda r: (order.index(r["case"]), r["hidden"], r["tokens"]))
    bandwidth = statistics.median(m["copy_bandwidth_TBps"] for m in metas) * 1e12
    meta = {**metas[0], "copy_bandwidth_TBps": bandwidth / 1e12, "runs": len(dirs),
            "copy_bandwidth_per_run_TBps": [m["copy_bandwidth_TBps"] for m in metas]}  # fmt: skip
    summary = summarize(results, bandwidth)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps({"meta": meta, "summary": summary, "results": results}, indent=1))
    (out / "bench.md").write_text(markdown(results))
    try:
        plot(results, out / "bench.png")
    except ImportError as exc:
        print(f"no plot: {exc}")
    print(json.dumps(summary, indent=1))


POLICY_SCHEMES = {"static": "fp8_static", "per_token": "fp8_per_token", "group128": "fp8_group128",
                  "group64": "fp8_group64", "int8_static": "int8_static", "int8_per_token": "int8_per_token"}  # fmt: skip


def policy_table(bench_jsons: list[Path], kind: str = "cuda", arch: str = "sm_90") -> str:
    """The native policy table (fusion_passes/policy.py) that runs' results imply: a cell counts
    as faster only if ours was at least as fast in every run given."""
    from fusion_passes.policy import ranges_from_speedups

    rows = [r for path in bench_jsons for r in json.loads(path.read_text())["results"]]
    worst: dict[str, dict[int, float]] = {}
    for r in rows:
        per_t = worst.setdefault(r["case"], {})
        per_t[r["tokens"]] = min(per_t.get(r["tokens"], math.inf), r["speedup_vs_inductor"])
    lines = []
    for case, per_t in worst.items():
        base, residual = case.removesuffix("+res"), case.endswith("+res")
        ranges = ranges_from_speedups(per_t)
        key = (kind, arch, POLICY_SCHEMES[base], residual)
        lines.append(f"    {key!r}: {ranges!r}," if ranges else f"    # {key!r}: never at least as fast")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--quick", action="store_true", help="a few cells, default Inductor mode only")
    parser.add_argument("--cases", default="", help="comma-separated case names")
    parser.add_argument("--modes", default="", help="Inductor modes (default: both; --quick: default only)")
    parser.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1))
    parser.add_argument("--autotune-tokens", default="", help="run max-autotune only for these token counts")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="DIR",
                        help="combine the bench.json of runs over disjoint cases (same device, back to back) "
                             "into --out: table, summary, plot; later runs win for a cell in several")  # fmt: skip
    parser.add_argument("--policy", type=Path, nargs="+", metavar="BENCH_JSON",
                        help="print the native policy table that runs' bench.json files imply (the worst of them per cell)")  # fmt: skip
    args = parser.parse_args()
    if args.policy:
        print(policy_table(args.policy))
        return
    if args.merge:
        merge(args.merge, args.out)
        return

    import fusion_kernels

    fusion_kernels.load(strict=True)
    args.out.mkdir(parents=True, exist_ok=True)
    modes = tuple(args.modes.split(",")) if args.modes else (("default",) if args.quick else INDUCTOR_MODES)
    cell_list = cells(args.quick, [c for c in args.cases.split(",") if c] or None)
    log_file = open(args.out / "bench.txt", "w")

    def log(msg: str) -> None:
        print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    autotune_tokens = {int(t) for t in args.autotune_tokens.split(",") if t} or None
    start = time.time()
    warm_inductor(cell_list, modes, args.workers, autotune_tokens)
    log(f"inductor warm-up: {time.time() - start:.0f} s for {len(cell_list)} cells x {len(modes)} modes")
    bandwidth = copy_bandwidth()
    props = torch.cuda.get_device_properties(0)
    meta = {
        "device": props.name,
        "sms": props.multi_processor_count,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": time.strftime("%Y-%m-%d"),
        "copy_bandwidth_TBps": bandwidth / 1e12,
        "modes": modes,
        "dtype": str(DTYPE),
    }
    log(json.dumps(meta))

    def save(rows):  # after every cell, so a run cut short still leaves its results
        (args.out / "bench.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=1))

    results = run(cell_list, modes, bandwidth, log, autotune_tokens, save)
    summary = summarize(results, bandwidth)
    log(json.dumps(summary, indent=1))
    (args.out / "bench.json").write_text(json.dumps({"meta": meta, "summary": summary, "results": results}, indent=1))
    (args.out / "bench.md").write_text(markdown(results))
    try:
        plot(results, args.out / "bench.png")
    except ImportError as exc:
        log(f"no plot: {exc}")
    log(f"total: {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
