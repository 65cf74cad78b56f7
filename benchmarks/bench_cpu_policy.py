# SPDX-License-Identifier: Apache-2.0
"""Our CPU kernels against Inductor's C++ code for the same plain-torch function: the measurements
behind the CPU rows of the native policy (``fusion_passes/policy.py``).

Per case (a scheme, with and without the residual add) and token count T in {1, 16, 128, 1024}
at H = 4096 in bf16, the plain-torch function (``fusion_passes.native_forms``: the residual add,
the Hugging Face RMSNorm, the scheme's quantizer) compiled the two ways ``native="auto"`` chooses
between, so that both pay the same call path as in a compiled model:

* Inductor: ``torch.compile`` in its default mode (on CPU: one generated C++ kernel per site);
* ours: ``fusion_passes.compile(..., native="always")``: the same compile with the site rewritten
  into our fused op (checked: one site fused), which Inductor's wrapper calls.

One compile per case and way with the token dim dynamic (``mark_dynamic``, as a server compiles
its batch dim; Dynamo specializes T = 1, which gets its own compile, as it would in a model).

Both are timed in turn (a sample of one, then of the other: load on the machine hits them
alike), each sample at least 1 ms of calls over input sets rotated so that together they exceed
the L3 cache, at least 10 samples each and ``--min-run-time`` seconds (0.2) per cell. The verdict
uses the fastest sample of each (what the code does when nothing else runs on the cores: on a
shared machine the median moves with the load, which the record also notes); the medians are
recorded too.

One thread by default (``--threads``): on a shared machine a parallel region waits until every
one of its threads has been scheduled, which under load costs a scheduler time slice per call
and swamps microsecond kernels; both computations split rows across threads alike.

Inductor generates its C++ for the instruction set torch reports
(``torch.backends.cpu.get_cpu_capability()``, which the policy keys the rows by);
``ATEN_CPU_CAPABILITY=avx2`` lowers it, so an AVX-512 machine can also measure the AVX2 rows. Our
kernels are compiled for the baseline x86-64 instruction set either way (no -march).

    python benchmarks/bench_cpu_policy.py --out benchmarks/results/cpu-avx512      # ~5 min on 2 cores
    ATEN_CPU_CAPABILITY=avx2 python benchmarks/bench_cpu_policy.py --out benchmarks/results/cpu-avx2
    python benchmarks/bench_cpu_policy.py --policy benchmarks/results/cpu-*/cpu.json   # the table rows
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch

HIDDEN = 4096
TOKENS = [1, 16, 128, 1024]
EPS = 1e-6
DTYPE = torch.bfloat16
FP8 = torch.float8_e4m3fn
# The policy's scheme labels (fusion_passes.policy.scheme_label): (quant dtype, scheme, group size).
SCHEMES = {
    "fp8_static": (FP8, "static", None),
    "fp8_per_token": (FP8, "per_token", None),
    "fp8_group128": (FP8, "group", 128),
    "fp8_group64": (FP8, "group", 64),
    "int8_static": (torch.int8, "static", None),
    "int8_per_token": (torch.int8, "per_token", None),
}
CASES = [(scheme, residual) for scheme in SCHEMES for residual in (False, True)]


def case_name(scheme: str, residual: bool) -> str:
    return scheme + ("+res" if residual else "")


def native_fn(scheme: str, residual: bool):
    """The plain-torch function Inductor compiles."""
    from fusion_passes import native_forms as nf

    qdtype, kind, group = SCHEMES[scheme]

    def fn(x, r, w, s):
        if residual:
            x, r = nf.add_residual(x, r)
        y = nf.rms_norm_hf(x, w, EPS)
        if kind == "static":
            out = (nf.quant_fp8_static(y, s, qdtype) if qdtype == FP8 else nf.quant_int8_static(y, s),)
        elif kind == "per_token":
            out = nf.quant_fp8_per_token(y, qdtype) if qdtype == FP8 else nf.quant_int8_per_token(y)
        else:
            out = nf.quant_fp8_per_group(y, group, qdtype)
        return (*out, r) if residual else out

    return fn


def l3_bytes() -> int:
    try:
        return os.sysconf("SC_LEVEL3_CACHE_SIZE") or 32 << 20
    except (ValueError, OSError):
        return 32 << 20


def make_inputs(scheme: str, tokens: int, seed: int = 0):
    """Input sets that together are 2x the L3 (at most 64): no call finds its inputs in the cache
    by having run on them just before, except where they all fit anyway (small T)."""
    g = torch.Generator().manual_seed(seed)
    per_set = 2 * tokens * HIDDEN * DTYPE.itemsize
    sets = int(min(64, max(2, math.ceil(2 * l3_bytes() / per_set))))
    w = (1 + 0.2 * torch.randn(HIDDEN, generator=g)).to(DTYPE)
    s = torch.tensor(4.0 / (127.0 if scheme.startswith("int8") else 448.0))
    xs = [torch.randn(tokens, HIDDEN, generator=g).to(DTYPE) for _ in range(sets)]
    rs = [torch.randn(tokens, HIDDEN, generator=g).to(DTYPE) for _ in range(sets)]
    return xs, rs, w, s


def time_pair(fns: dict, xs, rs, w, s, min_run_time: float) -> dict[str, tuple[float, float]]:
    """{name: (fastest, median) time of one call in µs}, the functions sampled in turn (one sample
    of each, then again: load on the machine hits them alike), each sample at least 1 ms of calls
    rotating over the input sets, at least 10 samples each and ``min_run_time`` seconds in all."""
    nxt = itertools.cycle(range(len(xs))).__next__

    def sample(fn, k):
        start = time.perf_counter()
        for _ in range(k):
            i = nxt()
            fn(xs[i], rs[i], w, s)
        return (time.perf_counter() - start) / k

    per_call = {}
    for name, fn in fns.items():
        for _ in range(3):
            sample(fn, 1)
        per_call[name] = max(1, int(1e-3 / max(sample(fn, 1), 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in fns}
    deadline = time.perf_counter() + min_run_time
    while min(len(v) for v in samples.values()) < 10 or time.perf_counter() < deadline:
        for name, fn in fns.items():
            samples[name].append(sample(fn, per_call[name]))
    return {name: (min(v) * 1e6, statistics.median(v) * 1e6) for name, v in samples.items()}


def same_meaning(a, b) -> bool:
    """Ours and Inductor's outputs have the same structure (numerics are the tests' job)."""
    a = a if isinstance(a, tuple | list) else (a,)
    b = b if isinstance(b, tuple | list) else (b,)
    return len(a) == len(b) and all(x.dtype == y.dtype and x.numel() == y.numel() for x, y in zip(a, b))


def run(out: Path | None, tokens: list[int], min_run_time: float, only: list[str] | None, threads: int = 1) -> dict:
    import fusion_kernels
    import fusion_passes
    from fusion_kernels import platform

    state = fusion_kernels.load()
    if not state.loaded:
        raise SystemExit(f"the op library is unavailable: {state.reason}")
    torch._dynamo.config.cache_size_limit = 1 << 12
    torch.set_num_threads(threads)
    info = platform.device_info("cpu")
    meta = {
        "device": info.name, "isa": info.isa, "threads": torch.get_num_threads(), "torch": torch.__version__,
        "date": datetime.date.today().isoformat(), "hidden": HIDDEN, "dtype": str(DTYPE),
        "aten_cpu_capability_env": os.environ.get("ATEN_CPU_CAPABILITY"),
        "compile": "default mode, token dim dynamic (T = 1 specialized); ours: the same with native='always'",
        "timing": "sampled in turn, >= 1 ms per sample, >= 10 samples; speedup from the fastest sample of each",
        "loadavg_start": os.getloadavg(),
    }  # fmt: skip
    print(f"CPU {meta['device']}, instruction set {meta['isa']}, {meta['threads']} threads, torch {meta['torch']}",
          flush=True)  # fmt: skip
    results = []
    start = time.perf_counter()
    for scheme, residual in CASES:
        name = case_name(scheme, residual)
        if only and name not in only:
            continue
        torch._dynamo.reset()
        inductor = torch.compile(native_fn(scheme, residual))
        ours = fusion_passes.compile(native_fn(scheme, residual), native="always")
        for t in sorted(tokens):
            xs, rs, w, s = make_inputs(scheme, t)
            if t > 1:
                torch._dynamo.mark_dynamic(xs[0], 0)
                torch._dynamo.mark_dynamic(rs[0], 0)
            with torch.no_grad():
                if not same_meaning(ours(xs[0], rs[0], w, s), inductor(xs[0], rs[0], w, s)):
                    raise SystemExit(f"{name} T={t}: the two compiles' outputs differ in structure")
                rep = fusion_passes.report(ours)
                if rep.graphs[-1].fused != 1:
                    raise SystemExit(f"{name} T={t}: the plugin did not fuse the site:\n{rep}")
                times = time_pair({"ours": ours, "inductor": inductor}, xs, rs, w, s, min_run_time)
                (t_ours, med_ours), (t_ind, med_ind) = times["ours"], times["inductor"]
            row = {"case": name, "scheme": scheme, "residual": residual, "tokens": t, "hidden": HIDDEN,
                   "ours_us": t_ours, "inductor_us": t_ind, "speedup_vs_inductor": t_ind / t_ours,
                   "ours_median_us": med_ours, "inductor_median_us": med_ind}  # fmt: skip
            results.append(row)
            print(f"{name:20s} T={t:5d}  ours {t_ours:9.2f} µs  Inductor {t_ind:9.2f} µs  "
                  f"{row['speedup_vs_inductor']:.2f}x   ({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    meta["loadavg_end"] = os.getloadavg()
    meta["seconds"] = round(time.perf_counter() - start)
    record = {"meta": meta, "results": results}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "cpu.json").write_text(json.dumps(record, indent=1))
        (out / "cpu.md").write_text(markdown(record))
        print(f"wrote {out / 'cpu.json'} and {out / 'cpu.md'}")
    print(markdown(record))
    print(policy_table([record]))
    return record


def markdown(record: dict) -> str:
    meta = record["meta"]
    load = f"; load average {meta['loadavg_start'][0]:.1f} at the start" if "loadavg_start" in meta else ""
    lines = [f"CPU {meta['device']}, {meta['isa']}, {meta['threads']} threads, torch {meta['torch']}, "
             f"{meta['date']}{load}. H = {meta['hidden']} bf16: speedup of ours over Inductor "
             "(µs ours / Inductor, fastest samples)", "",
             "| case | " + " | ".join(f"T={t}" for t in sorted({r['tokens'] for r in record["results"]})) + " |"]  # fmt: skip
    lines.append("|---" * (len(lines[-1].split("|")) - 2) + "|")
    by_case: dict[str, list[dict]] = {}
    for r in record["results"]:
        by_case.setdefault(r["case"], []).append(r)
    for case, rows in by_case.items():
        cells = [f"{r['speedup_vs_inductor']:.2f}x ({r['ours_us']:.1f} / {r['inductor_us']:.1f})"
                 for r in sorted(rows, key=lambda r: r["tokens"])]  # fmt: skip
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def policy_table(records: list[dict]) -> str:
    """The CPU rows of MEASURED_FASTER that records imply: per instruction set, the worst of the
    records per cell (a cell counts only where ours was at least as fast in every record)."""
    from fusion_passes.policy import ranges_from_speedups

    worst: dict[tuple[str, str, bool], dict[int, float]] = {}
    for rec in records:
        for r in rec["results"]:
            per_t = worst.setdefault((rec["meta"]["isa"], r["scheme"], r["residual"]), {})
            per_t[r["tokens"]] = min(per_t.get(r["tokens"], math.inf), r["speedup_vs_inductor"])
    lines = []
    for (isa, scheme, residual), per_t in worst.items():
        key = ("cpu", isa, "", scheme, residual)
        ranges = ranges_from_speedups(per_t)
        lines.append(f"    {key!r}: {ranges!r}," if ranges else f"    # {key!r}: never at least as fast")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--out", type=Path, help="write cpu.json and cpu.md here")
    parser.add_argument("--tokens", type=lambda s: [int(t) for t in s.split(",")], default=TOKENS)
    parser.add_argument(
        "--cases", type=lambda s: s.split(","), help="only these cases (e.g. fp8_static,fp8_static+res)"
    )
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds of samples per cell, at least")
    parser.add_argument("--threads", type=int, default=1, help="torch (and Inductor's OpenMP) threads")
    parser.add_argument("--policy", type=Path, nargs="+", metavar="CPU_JSON",
                        help="print the policy rows that records imply (the worst of them per cell)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.policy:
        print(policy_table([json.loads(p.read_text()) for p in args.policy]))
        return
    run(args.out, args.tokens, args.min_run_time, args.cases, args.threads)


if __name__ == "__main__":
    main()
