# SPDX-License-Identifier: Apache-2.0
"""The kernel benchmark's outputs: summary against the targets, markdown table, plot, the merge
of several runs into one record, and the native policy table a record implies.

Reads and writes ``bench.json`` files: ``{"meta": ..., "summary": ..., "results": [row, ...]}``,
one row per cell with GPU seconds per call for ``fused``, ``unfused``, ``eager`` and every
Inductor baseline timed (``inductor[<name>]``), their best (``inductor``) and which one that was
(``inductor_variant``), and each as a percentage of the copy bandwidth (``*_pct``).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from bench_cases import CASE_NAMES

SHORT = {"max-autotune-no-cudagraphs": "max-autotune"}  # baseline names as the table prints them


def inductor_times(row: dict) -> dict[str, float]:
    """The Inductor baselines timed for a row: {name: seconds}."""
    return {k[len("inductor[") : -1]: v for k, v in row.items() if k.startswith("inductor[")}


def finish_row(row: dict, bandwidth: float) -> dict:
    """Add the best Inductor baseline, the percentages and the speedup to a row of times."""
    times = inductor_times(row)
    row["inductor_variant"] = min(times, key=times.get)
    row["inductor"] = times[row["inductor_variant"]]
    for k in ("fused", "unfused", "inductor", "eager"):
        row[f"{k}_pct"] = 100.0 * row["bytes"] / row[k] / bandwidth
    row["speedup_vs_inductor"] = row["inductor"] / row["fused"]
    return row


def winner(row: dict) -> str:
    """Which Inductor baseline was the best for a row (rows of records before this field: from
    their times)."""
    if "inductor_variant" in row:
        return row["inductor_variant"]
    times = inductor_times(row)
    return min(times, key=times.get) if times else "?"


def summarize(results: list[dict], bandwidth: float) -> dict:
    ratios = [r["speedup_vs_inductor"] for r in results]
    geomean = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
    worst = min(results, key=lambda r: r["speedup_vs_inductor"])
    wins: dict[str, int] = {}
    for r in results:
        wins[winner(r)] = wins.get(winner(r), 0) + 1
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
        "inductor_variant_wins": dict(sorted(wins.items())),
        "copy_bandwidth_TBps": bandwidth / 1e12,
    }


def markdown(results: list[dict]) -> str:
    lines = [
        "| case | H | T | fused µs | % copy BW | unfused µs | Inductor µs | % copy BW | best Inductor | eager µs | Inductor / fused |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in results:
        best = winner(r)
        lines.append(
            f"| {r['case']} | {r['hidden']} | {r['tokens']} | {r['fused'] * 1e6:.2f} | {r['fused_pct']:.1f} | "
            f"{r['unfused'] * 1e6:.2f} | {r['inductor'] * 1e6:.2f} | {r['inductor_pct']:.1f} | {SHORT.get(best, best)} | "
            f"{r['eager'] * 1e6:.2f} | {r['speedup_vs_inductor']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["case"], r["hidden"]) for r in results}, key=lambda k: (CASE_NAMES.index(k[0]), k[1]))
    cols = 4
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (case, hidden) in zip(axes.flat, keys):
        rs = sorted((r for r in results if r["case"] == case and r["hidden"] == hidden), key=lambda r: r["tokens"])
        ts = [r["tokens"] for r in rs]
        ax.plot(ts, [r["fused_pct"] for r in rs], "o-", label="fusion_kernels fused")
        ax.plot(ts, [r["inductor_pct"] for r in rs], "s--", label="Inductor (best baseline)")
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
    fig.savefig(path, dpi=80)


def write(out: Path, meta: dict, results: list[dict], bandwidth: float, log=print) -> dict:
    """A run's or a merge's bench.json (with its summary), bench.md and bench.png in ``out``."""
    summary = summarize(results, bandwidth)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps({"meta": meta, "summary": summary, "results": results}, indent=1))
    (out / "bench.md").write_text(markdown(results))
    try:
        plot(results, out / "bench.png")
    except ImportError as exc:
        log(f"no plot: {exc}")
    return summary


def merge(dirs: list[Path], out: Path) -> None:
    """Combine runs over disjoint cases (same device, back to back); later runs win for a cell
    in several. The copy bandwidth is the runs' median."""
    cells: dict[tuple, dict] = {}
    metas = []
    for d in dirs:
        data = json.loads((d / "bench.json").read_text())
        metas.append(data["meta"])
        for row in data["results"]:
            cells[(row["case"], row["hidden"], row["tokens"])] = row
    results = sorted(cells.values(), key=lambda r: (CASE_NAMES.index(r["case"]), r["hidden"], r["tokens"]))
    bandwidth = statistics.median(m["copy_bandwidth_TBps"] for m in metas) * 1e12
    meta = {**metas[0], "copy_bandwidth_TBps": bandwidth / 1e12, "runs": len(dirs),
            "copy_bandwidth_per_run_TBps": [m["copy_bandwidth_TBps"] for m in metas]}  # fmt: skip
    print(json.dumps(write(out, meta, results, bandwidth), indent=1))


POLICY_SCHEMES = {"static": "fp8_static", "per_token": "fp8_per_token", "group128": "fp8_group128",
                  "group64": "fp8_group64", "int8_static": "int8_static", "int8_per_token": "int8_per_token",
                  "per_tensor": "fp8_per_tensor", "mxfp8": "mxfp8", "nvfp4": "nvfp4",
                  "nvfp4_swizzled": "nvfp4_swizzled", "mxfp4_swizzled": "mxfp4_swizzled",
                  "group128_packed": "fp8_group128_packed", "int8_group128": "int8_group128"}  # fmt: skip


def policy_table(bench_jsons: list[Path], kind: str = "cuda", arch: str = "sm_90") -> str:
    """The native policy table (fusion_passes/policy.py) that runs' results imply: a cell counts
    as faster only if ours was at least as fast in every run given. The rows are keyed by the
    device the runs name (all of them must name the same one)."""
    from fusion_passes.policy import ranges_from_speedups

    records = [json.loads(path.read_text()) for path in bench_jsons]
    devices = {rec["meta"]["device"] for rec in records}
    if len(devices) != 1:
        raise ValueError(
            f"the runs name {len(devices)} devices ({sorted(devices)}): derive one device's rows at a time"
        )
    (device,) = devices
    rows = [r for rec in records for r in rec["results"]]
    worst: dict[str, dict[int, float]] = {}
    for r in rows:
        per_t = worst.setdefault(r["case"], {})
        per_t[r["tokens"]] = min(per_t.get(r["tokens"], math.inf), r["speedup_vs_inductor"])
    lines = []
    for case, per_t in worst.items():
        base, residual = case.removesuffix("+res"), case.endswith("+res")
        ranges = ranges_from_speedups(per_t)
        key = (kind, arch, device, POLICY_SCHEMES[base], residual)
        lines.append(f"    {key!r}: {ranges!r}," if ranges else f"    # {key!r}: never at least as fast")
    return "\n".join(lines)
