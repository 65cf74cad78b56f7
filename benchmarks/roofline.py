# SPDX-License-Identifier: Apache-2.0
"""Streaming roofline in the kernel benchmark's timer: simple kernels of each read:write mix
(a bf16 copy, casts to FP8, an add + cast, our quant kernels with the norm stage off) next to
our fused op and Inductor's, at T = 4096 and 16384, H = 4096 and 8192. Shows how close to the
memory limit a kernel of that traffic gets.

    python benchmarks/roofline.py
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_baselines  # noqa: E402
import bench_cases  # noqa: E402
import bench_timing  # noqa: E402

FP8 = torch.float8_e4m3fn


def main() -> None:
    import fusion_kernels

    fusion_kernels.load(strict=True)
    bw = bench_timing.copy_bandwidth()
    print(f"copy bandwidth {bw / 1e12:.3f} TB/s")
    inv = torch.tensor(448.0 / 4.0, device="cuda")

    def cast_scaled(x, r, w, s):
        return ((x.float() * inv).clamp(-448, 448).to(FP8),)

    def add_cast(x, r, w, s):
        y = x + r
        return ((y.float() * inv).clamp(-448, 448).to(FP8), y)

    ops = torch.ops.fusion_kernels
    ours_quant = {
        "static": lambda x, r, w, s: (ops.static_scaled_fp8_quant(x, s, FP8),),
        "per_token": lambda x, r, w, s: ops.dynamic_per_token_scaled_fp8_quant(x, None, FP8),
        "group": lambda x, r, w, s: ops.per_token_group_fp8_quant(x, 128, False, False, FP8),
    }
    compiled = {"cast": torch.compile(cast_scaled, dynamic=False), "add": torch.compile(add_cast, dynamic=False)}
    for hidden in (4096, 8192):
        for tokens in (4096, 16384):
            for residual in (False, True):
                cell = bench_cases.Cell("static+res" if residual else "static", hidden, tokens)
                n = tokens * hidden
                xs, rs, w, s = bench_timing.make_inputs(cell, bench_timing.input_sets(cell))
                if residual:
                    variants = {"Inductor add + cast (r4 w3)": (compiled["add"], 7 * n),
                                "aten add (r4 w2)": (lambda x, r, w, s: (x + r,), 6 * n)}  # fmt: skip
                else:
                    variants = {"bf16 copy (r2 w2)": (lambda x, r, w, s: (x.clone(),), 4 * n),
                                "aten to(fp8) (r2 w1)": (lambda x, r, w, s: (x.to(FP8),), 3 * n),
                                "Inductor scaled cast (r2 w1)": (compiled["cast"], 3 * n),
                                # Our kernel with the norm stage off: the fused op's structure
                                # (a row per block, loads issued at once) without its reduction.
                                "ours quant only, static (r2 w1)": (ours_quant["static"], 3 * n),
                                "ours quant only, per-token (r2 w1)": (ours_quant["per_token"], 3 * n + 4 * tokens),
                                "ours quant only, group 128 (r2 w1)": (ours_quant["group"], 3 * n + n // 32)}  # fmt: skip
                variants["ours fused"] = (bench_cases.ours_fns(cell)[0], bench_cases.min_bytes(cell))
                variants["Inductor fused"] = (
                    bench_baselines.compile_native(cell, "default"),
                    bench_cases.min_bytes(cell),
                )
                for name, (fn, nbytes) in variants.items():
                    fn(xs[0], rs[0], w, s)
                    t = bench_timing.time_graph(fn, xs, rs, w, s, nbytes / bw)
                    print(f"H={hidden:5d} T={tokens:6d} {name:30s} {t * 1e6:9.2f} us {100 * nbytes / t / bw:6.1f}%")
                del xs, rs
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
