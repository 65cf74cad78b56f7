# SPDX-License-Identifier: Apache-2.0
"""Kernel benchmark: our fused op vs our two unfused ops vs Inductor vs eager, one run.

For every case (scheme x residual), hidden size and token count it times, side by side:

* ``fused``     our fused op (one kernel);
* ``unfused``   our rms_norm / fused_add_rms_norm followed by our quant op;
* ``inductor``  ``torch.compile`` of the same computation written in plain torch
                (fusion_passes.native_forms: F.rms_norm + the quant): the best of the baselines
                a user would pick (bench_baselines.py: the default compile, max-autotune, and one
                compile with a dynamic token dim reused over T), the winner recorded per cell;
* ``eager``     the plain-torch function, uncompiled.

GPU time per call comes from CUDA-graph replay of many calls over rotating input sets (so no
call finds its inputs in L2), median over repeats (bench_timing.py). Every variant is checked
against the reference before it is timed. The device's copy bandwidth is measured in the same
run, and each result is reported as effective bandwidth (minimal bytes read + written / time)
and as a fraction of it (bench_report.py writes bench.json, bench.md and bench.png).

    python benchmarks/bench_kernels.py --out results/                  # the record's grid, every baseline
    python benchmarks/bench_kernels.py --quick --out results/          # a few cells, default compile only
    python benchmarks/bench_kernels.py --hidden 2048,2880,3584,5120,6144,12288,16384,4100 --out wide/
    python benchmarks/bench_kernels.py --dry-run --hidden 2880,4100    # list the cells and baselines (no GPU)

The microscaling cases (NVFP4 with row-major and with swizzled scales, MXFP8, MXFP4 with
swizzled scales; each with and without the residual add) are cells of the same grid, H = 4096,
7168, 8192; their Inductor baseline compiles fusion_kernels.microscaling's quantizers (torchao's
arithmetic), their bytes count the packed outputs (bench_cases.min_bytes):

    python benchmarks/bench_kernels.py --cases nvfp4,nvfp4+res,nvfp4_swizzled,nvfp4_swizzled+res,mxfp8,mxfp8+res,mxfp4_swizzled,mxfp4_swizzled+res --out mx/
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # the sibling modules, also when this file is loaded by path
    sys.path.insert(0, _HERE)

import torch  # noqa: E402
from bench_baselines import BASELINES, QUICK_BASELINES, Baselines, baselines_for, parse_baselines, warm_inductor  # noqa: E402
from bench_cases import CASE_NAMES, DTYPE, Cell, cells, check_cell, min_bytes, native_fn, ours_fns  # noqa: E402
from bench_report import finish_row, merge, policy_table, summarize, write  # noqa: E402
from bench_timing import copy_bandwidth, input_sets, make_inputs, time_graph  # noqa: E402

__all__ = ["main", "merge", "policy_table", "run"]


def run(cell_list: list[Cell], baselines: Baselines, bandwidth: float, log, on_row=None) -> list[dict]:
    """Time every cell: ours fused and unfused, eager, each Inductor baseline; one row per cell."""
    results = []
    for cell in cell_list:
        nbytes = min_bytes(cell)
        xs, rs, w, s = make_inputs(cell, input_sets(cell))
        est = nbytes / bandwidth + 2e-6
        fused, unfused = ours_fns(cell)
        variants = {"fused": fused, "unfused": unfused, "eager": native_fn(cell)}
        for name, fn in baselines.fns(cell).items():
            variants[f"inductor[{name}]"] = fn
        row = {"case": cell.case, "hidden": cell.hidden, "tokens": cell.tokens, "bytes": nbytes}
        for name, fn in variants.items():
            outs = fn(xs[0], rs[0], w, s)
            check_cell(cell, name, outs, xs[0], rs[0], w, s)
            row[name] = time_graph(fn, xs, rs, w, s, est)
        results.append(finish_row(row, bandwidth))
        if on_row is not None:
            on_row(results)
        log(
            f"{cell.case:15s} H={cell.hidden:5d} T={cell.tokens:6d}  fused {row['fused'] * 1e6:8.2f} us "
            f"({row['fused_pct']:5.1f}%)  unfused {row['unfused'] * 1e6:8.2f}  inductor {row['inductor'] * 1e6:8.2f} "
            f"({row['inductor_pct']:5.1f}%, {row['inductor_variant']})  eager {row['eager'] * 1e6:8.2f}  "
            f"x{row['speedup_vs_inductor']:.2f}"
        )
        del xs, rs
        torch.cuda.empty_cache()
    return results


def ints(text: str) -> list[int] | None:
    return [int(v) for v in text.split(",") if v] or None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--quick", action="store_true", help="a few cells, default compile only")
    parser.add_argument("--cases", default="", help=f"comma-separated case names ({','.join(CASE_NAMES)})")
    parser.add_argument("--hidden", default="",
                        help="hidden sizes instead of the record's (4096, 8192; also 7168 for group and "
                             "microscaling cases), e.g. 2048,2880,3584,5120,6144,12288,16384,4100; a group or "
                             "microscaling case only where its group (block) size divides H")  # fmt: skip
    parser.add_argument("--tokens", default="", help="token counts (default 1,16,128,1024,4096,16384)")
    parser.add_argument("--baselines", "--modes", dest="baselines", default="",
                        help=f"Inductor baselines to time ({','.join(BASELINES)}; default: all; --quick: default only)")  # fmt: skip
    parser.add_argument(
        "--autotune-tokens", default="", help="run max-autotune only at these token counts (default: all)"
    )
    parser.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1))
    parser.add_argument(
        "--dry-run", action="store_true", help="print the cells and baselines a run would time, then stop"
    )
    parser.add_argument("--merge", nargs="+", type=Path, metavar="DIR",
                        help="combine the bench.json of runs over disjoint cases (same device, back to back) "
                             "into --out: table, summary, plot; later runs win for a cell in several")  # fmt: skip
    parser.add_argument("--policy", type=Path, nargs="+", metavar="BENCH_JSON",
                        help="print the native policy table that runs' bench.json files imply (the worst of them per cell)")  # fmt: skip
    return parser.parse_args(argv)


def plan(args) -> tuple[list[Cell], tuple[str, ...], set[int] | None]:
    names = parse_baselines(args.baselines) if args.baselines else (QUICK_BASELINES if args.quick else tuple(BASELINES))
    cell_list = cells(args.quick, [c for c in args.cases.split(",") if c] or None, ints(args.hidden), ints(args.tokens))
    autotune_tokens = set(ints(args.autotune_tokens) or ()) or None
    return cell_list, names, autotune_tokens


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.policy:
        print(policy_table(args.policy))
        return
    if args.merge:
        merge(args.merge, args.out)
        return
    cell_list, names, autotune_tokens = plan(args)
    if args.dry_run:
        for cell in cell_list:
            print(
                f"{cell.case:15s} H={cell.hidden:5d} T={cell.tokens:6d}  {','.join(baselines_for(cell, names, autotune_tokens))}"
            )
        print(f"{len(cell_list)} cells")
        return

    import fusion_kernels

    fusion_kernels.load(strict=True)
    args.out.mkdir(parents=True, exist_ok=True)
    log_file = open(args.out / "bench.txt", "w")

    def log(msg: str) -> None:
        print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    start = time.time()
    jobs = warm_inductor(cell_list, names, args.workers, autotune_tokens)
    log(f"inductor warm-up: {time.time() - start:.0f} s for {len(cell_list)} cells, {jobs} compile jobs")
    bandwidth = copy_bandwidth()
    props = torch.cuda.get_device_properties(0)
    meta = {
        "device": props.name,
        "sms": props.multi_processor_count,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date": time.strftime("%Y-%m-%d"),
        "copy_bandwidth_TBps": bandwidth / 1e12,
        "baselines": names,
        "autotune_tokens": sorted(autotune_tokens) if autotune_tokens else "all",
        "dtype": str(DTYPE),
    }
    log(json.dumps(meta))

    def save(rows):  # after every cell, so a run cut short still leaves its results
        (args.out / "bench.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=1))

    results = run(cell_list, Baselines(names, autotune_tokens), bandwidth, log, save)
    log(json.dumps(summarize(results, bandwidth), indent=1))
    write(args.out, meta, results, bandwidth, log)
    log(f"total: {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
