# SPDX-License-Identifier: Apache-2.0
"""The op between two FP8 matmuls, as a model runs it: what a user gets from the fused kernel and
from programmatic dependent launch (PDL).

Per cell (an FP8 case of the kernel benchmark, H = 8192, T = 16, 1024, 4096) one CUDA graph of
many steps, each step::

    a = torch._scaled_mm(x, W1)            # [T, H] FP8 x [H, H] FP8 -> bf16
    q, ... = norm + quant of a [+ residual] # ours (one kernel), or Inductor's kernel(s)
    o = torch._scaled_mm(q, W2)            # the quantized activation feeds the next matmul

timed three ways in one process: with our fused op, with Inductor's compile of the same plain-torch
function (default mode, static shapes) in that position, and the two matmuls alone (so the op's
share is the difference). The matmuls use per-tensor scales whatever the case (the consumer reads q;
its scale layout does not change the kernel sequence). PDL is a process-wide switch: run once as
is and once with ``FUSION_KERNELS_PDL=0`` (``--label``), then compare the two tables.

    python benchmarks/bench_neighbour.py --out neighbour/                  # default launches
    FUSION_KERNELS_PDL=0 python benchmarks/bench_neighbour.py --out neighbour/ --label plain
    python benchmarks/bench_neighbour.py --check                           # tiny, CPU: the graphs compute the same

``--check`` runs the three step functions once at a small size on the current device (CPU
without a GPU) and checks that ours and Inductor's quantize the same activation alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cases import DTYPE, Cell, native_fn, ours_fns  # noqa: E402

FP8_CASES = ["static", "static+res", "per_token", "per_token+res", "group128", "group128+res", "group64"]
TOKENS = [16, 1024, 4096]
HIDDEN = 8192


def make_step(variant, w1: torch.Tensor, w2: torch.Tensor, one: torch.Tensor):
    """One model step: matmul, ``variant`` (None: nothing), matmul; returns the last output."""
    fp8 = torch.float8_e4m3fn

    def step(x, r, w, s):
        a = torch._scaled_mm(x, w1.t(), scale_a=one, scale_b=one, out_dtype=DTYPE)
        if variant is None:
            q = a.to(fp8)  # the matmul pair alone (one small cast stands in for the op's output)
        else:
            q = variant(a, r, w, s)[0]
        return torch._scaled_mm(q, w2.t(), scale_a=one, scale_b=one, out_dtype=DTYPE)

    return step


def inputs(cell: Cell, sets: int, device: str, seed: int = 0):
    g = torch.Generator(device=device).manual_seed(seed)
    t, h = cell.tokens, cell.hidden
    fp8 = torch.float8_e4m3fn
    rnd = lambda *shape, scale=1.0: torch.randn(*shape, generator=g, device=device) * scale  # noqa: E731
    w1 = (rnd(h, h, scale=1.0 / h**0.5)).to(fp8)
    w2 = (rnd(h, h, scale=1.0 / h**0.5)).to(fp8)
    xs = [rnd(t, h).to(fp8) for _ in range(sets)]
    rs = [rnd(t, h).to(DTYPE) for _ in range(sets)]
    w = (1 + 0.2 * rnd(h)).to(DTYPE)
    s = torch.tensor(4.0 / 448.0, device=device)
    one = torch.tensor(1.0, device=device)
    return w1, w2, xs, rs, w, s, one


def variants(cell: Cell):
    fused, _ = ours_fns(cell)
    inductor = torch.compile(native_fn(cell), dynamic=False)
    return {"ours": fused, "inductor": inductor, "matmuls only": None}


def check(device: str, cases=FP8_CASES) -> None:
    """The step functions at a small size: ours and Inductor's quantize the same activation alike
    (the benchmark's own reference check on the middle op), and every step runs."""
    from bench_timing import check as check_outputs

    for case in cases:
        cell = Cell(case, 256, 16)
        w1, w2, xs, rs, w, s, one = inputs(cell, 1, device)
        a = torch._scaled_mm(xs[0], w1.t(), scale_a=one, scale_b=one, out_dtype=DTYPE)
        for name, fn in variants(cell).items():
            if fn is not None:
                check_outputs(cell, "fused" if name == "ours" else "inductor", fn(a, rs[0], w, s), a, rs[0], w, s)
            out = make_step(fn, w1, w2, one)(xs[0], rs[0], w, s)
            assert out.shape == (16, 256) and out.dtype == DTYPE, (case, name, out.shape)
        print(f"check {case}: ok")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--out", type=Path, default=Path("neighbour"))
    parser.add_argument("--label", default="default", help="the run's name (e.g. plain for FUSION_KERNELS_PDL=0)")
    parser.add_argument("--cases", default=",".join(FP8_CASES))
    parser.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    parser.add_argument("--check", action="store_true", help="a tiny correctness run on the current device")
    args = parser.parse_args(argv)

    import fusion_kernels

    fusion_kernels.load(strict=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.check:
        check(device, args.cases.split(","))
        return
    if device != "cuda":
        raise SystemExit("bench_neighbour: timing needs a CUDA device (--check runs anywhere)")
    from bench_timing import time_graph

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for case in args.cases.split(","):
        for t in (int(x) for x in args.tokens.split(",")):
            cell = Cell(case, HIDDEN, t)
            w1, w2, xs, rs, w, s, one = inputs(cell, 4, "cuda")
            row = {"case": case, "tokens": t, "hidden": HIDDEN, "label": args.label}
            for name, fn in variants(cell).items():
                step = make_step(fn, w1, w2, one)
                row[name] = time_graph(step, xs, rs, w, s, est_seconds=2e-5) * 1e6
            row["ours_share_us"] = row["ours"] - row["matmuls only"]
            row["inductor_share_us"] = row["inductor"] - row["matmuls only"]
            row["step_speedup"] = row["inductor"] / row["ours"]
            rows.append(row)
            print(
                f"{case:14s} T={t:5d}  step: ours {row['ours']:8.2f} us  inductor {row['inductor']:8.2f} us  "
                f"matmuls {row['matmuls only']:8.2f} us  -> op share ours {row['ours_share_us']:6.2f} / "
                f"inductor {row['inductor_share_us']:6.2f} us  ({row['step_speedup']:.3f}x)",
                flush=True,
            )
    meta = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "label": args.label, "median_step_speedup": statistics.median(r["step_speedup"] for r in rows)}  # fmt: skip
    (args.out / f"neighbour-{args.label}.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=1))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
