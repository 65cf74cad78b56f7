# SPDX-License-Identifier: Apache-2.0
"""The shortest path to the rewritten graph on disk.

    python examples/inspect_with_depyf.py                  # into a new temporary directory
    python examples/inspect_with_depyf.py --out dump/      # or into dump/

Without the compiled op library (FUSION_KERNELS_DISABLE=1, no C++ compiler, a failed build)
nothing is rewritten; the dumps and the report are still written and say why. Without a C++
compiler torch.compile cannot run on CPU at all: the example says so and writes nothing.
"""

import argparse
import tempfile
from pathlib import Path

import torch

import fusion_passes
from fusion_kernels import platform
from fusion_passes import native_forms as nf


def norm_then_quant(x, weight, scale):
    return nf.quant_fp8_static(nf.rms_norm_hf(x, weight, 1e-6), scale)


def main(argv=None) -> fusion_passes.Report | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: a new temporary one)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="fusion_passes_inspect_"))

    cannot_compile = platform.inductor_unavailable("cpu")
    if cannot_compile:  # nothing to inspect: there is no compiled graph
        print(f"nothing was rewritten: {cannot_compile}")
        return None
    x = torch.randn(8, 256, dtype=torch.bfloat16)
    w = torch.ones(256, dtype=torch.bfloat16)
    report = fusion_passes.inspect(norm_then_quant, x, w, torch.tensor(0.01), out_dir=out, native="always")
    print(report)
    if report.fused == 0:
        print(f"\nnothing was rewritten: {report.library}" if report.active_patterns == []
              else f"\nnothing was rewritten: {', '.join(sorted(report.refusals_per_reason())) or 'no site matched'}")  # fmt: skip
    print(f"\nthe post-grad graph before and after the pass: {out / 'graphs'}/graph_0_before.py, graph_0_after.py")
    print(f"depyf's dumps: {out / 'depyf'} (index: {out / 'depyf' / 'INDEX.txt'}); the report: {out / 'report.txt'}")
    return report


if __name__ == "__main__":
    main()
