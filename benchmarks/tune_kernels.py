# SPDX-License-Identifier: Apache-2.0
"""Build several variants of the CUDA kernels (compile-time knobs) and time their fused ops.

Each variant is the same sources built with -D overrides by the project's build module; each is
timed in its own process (op registrations are process-global) with the kernel benchmark's
CUDA-graph timer. Used to choose the defaults in csrc/cuda/row_op_kernels.cuh; the results are
recorded in BENCHMARKS.md.

    python benchmarks/tune_kernels.py --out tune/ \
        --variant base: --variant nopipe:FK_PIPELINE=0 --variant s2:FK_CACHED_SLOTS=2 \
        --cells static:4096:16,group128:7168:16384

An A/B of two commits' sources: build each library (``python -m fusion_kernels build --target
cuda --archs sm_90 --out DIR`` in each checkout), then ``--library old:DIR/libfusion_kernels.so
--library new:... --cells record`` times both over every cell of the record's grid, each in its
own process.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CELLS = [
    ("static", 8192, 1), ("static", 8192, 4096), ("static", 8192, 16384),
    ("static+res", 8192, 16384),
    ("per_token", 8192, 1), ("per_token", 8192, 4096), ("per_token", 8192, 16384),
    ("per_token+res", 8192, 16384),
    ("group128", 7168, 1), ("group128", 7168, 4096), ("group128", 7168, 16384),
    ("group128+res", 7168, 16384),
    ("static", 4096, 16384), ("per_token", 4096, 16384),
]  # fmt: skip


def parse_cells(text: str) -> list[tuple[str, int, int]]:
    """``case:H:T,case:H:T`` (the kernel benchmark's case names)."""
    out = []
    for item in filter(None, text.split(",")):
        case, hidden, tokens = item.split(":")
        out.append((case, int(hidden), int(tokens)))
    return out


def time_library(lib: str, cells: list[tuple[str, int, int]]) -> list[dict]:
    import torch

    sys.path.insert(0, str(HERE))
    import bench_cases as bc
    import bench_timing as bt

    torch.ops.load_library(lib)
    bw = bt.copy_bandwidth()
    out = []
    for case, hidden, tokens in cells:
        cell = bc.Cell(case, hidden, tokens)
        xs, rs, w, s = bt.make_inputs(cell, bt.input_sets(cell))
        fused, _ = bc.ours_fns(cell)
        bt.check(cell, "fused", fused(xs[0], rs[0], w, s), xs[0], rs[0], w, s)
        t = bt.time_graph(fused, xs, rs, w, s, bc.min_bytes(cell) / bw + 2e-6)
        out.append({"case": case, "hidden": hidden, "tokens": tokens, "us": t * 1e6,
                    "pct": 100 * bc.min_bytes(cell) / t / bw})  # fmt: skip
        del xs, rs
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("tune"))
    parser.add_argument("--variant", action="append", default=[], help="name:DEF=V,DEF=V")
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--cells", default="", help="case:H:T,... (default: a fixed set of 14)")
    parser.add_argument(
        "--library", action="append", default=[], metavar="NAME:PATH",
        help="time an already built library (e.g. one built from another commit's sources) as a variant",
    )  # fmt: skip
    parser.add_argument("--time", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cells == "record":  # every cell of the default grid: an A/B over the whole record
        sys.path.insert(0, str(HERE))
        import bench_cases as bc

        cells = [(c.case, c.hidden, c.tokens) for c in bc.cells(False)]
    else:
        cells = parse_cells(args.cells) if args.cells else CELLS
    if args.time:
        print(json.dumps(time_library(args.time, cells)))
        return

    variants = {}
    for v in args.variant or ([] if args.library else ["base:"]):
        name, _, defs = v.partition(":")
        variants[name] = tuple(d for d in defs.split(",") if d)
    libs = {}
    if variants:
        from fusion_kernels import build

        jobs = max(2, (os.cpu_count() or 4) // max(1, len(variants)))

        def build_one(item):
            name, defs = item
            return name, build.build(build.Target("cuda", (args.arch,)), args.out / name, jobs=jobs, defines=defs)

        with concurrent.futures.ThreadPoolExecutor(len(variants)) as pool:
            libs = dict(pool.map(build_one, variants.items()))
    for item in args.library:
        name, _, path = item.partition(":")
        libs[name] = path
        variants[name] = ("prebuilt", path)
    results = {}
    for name, lib in libs.items():
        cmd = [sys.executable, __file__, "--time", str(lib), "--cells", ",".join(f"{c}:{h}:{t}" for c, h, t in cells)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name}: timing failed\n{proc.stderr[-3000:]}")
            continue
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tune.json").write_text(json.dumps({"variants": variants, "results": results}, indent=1))
    names = list(results)
    print(f"{'case':15s} {'H':>5s} {'T':>6s} " + " ".join(f"{n:>16s}" for n in names))
    for i, (case, hidden, tokens) in enumerate(cells):
        row = " ".join(f"{results[n][i]['us']:8.2f}us {results[n][i]['pct']:5.1f}%" for n in names)
        print(f"{case:15s} {hidden:5d} {tokens:6d} {row}")


if __name__ == "__main__":
    main()
