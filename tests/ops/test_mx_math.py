# SPDX-License-Identifier: Apache-2.0
"""csrc/microscaling.h (the microscaling ops' raw-float conversions) against independent models of
the PTX conversions and of fusion_kernels.microscaling: .ci/mx_math.cpp, compiled with the
build's C++ compiler and run here.

The test runs a strided sweep (``--stride``): every STRIDE-th fp32 magnitude, both signs, plus
every bit pattern of windows at both ends of every binade and around every point where a model's
result changes (each e2m1 / e4m3 midpoint, the even mode's and rceil's thresholds), a few
seconds. The full sweep over all 2^32 patterns takes about 80 CPU seconds (40 s on two idle
cores, 80 s on a busy two-core machine), too slow for the test suite; CI runs it on its own:
    g++ -O2 -std=c++17 -pthread -Icsrc .ci/mx_math.cpp -o mx_math && ./mx_math
"""

import re
import subprocess
from pathlib import Path

import pytest

from fusion_kernels.build import find_cxx

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / ".ci" / "mx_math.cpp"
STRIDE = 251

FUNCTIONS = (
    ["f32_to_e2m1 (cvt.rn.satfinite.e2m1x2.f32)", "f32_to_e2m1_finite (the same, non-NaN x)"]
    + ["e2m1_of_bf16(f32_to_bf16_odd(x)) (the GPU's packed steps, non-NaN x)"]
    + ["pack_e2m1x8 (the GPU's packed FP4 word: every bf16 value at each position)"]
    + ["f32_to_ue8m0_rp (cvt.rp.satfinite.ue8m0x2.f32)"]
    + ["f32_to_ue8m0_rp negative x (outside the spec; helper: sign ignored)"]
    + [f"mx_block_scale {m} {f}" for m in ("floor", "rceil", "ceil", "even") for f in ("e4m3", "e5m2", "e2m1")]
    + ["f32_to_e4m3fn (cvt.rn.satfinite.e4m3x2.f32)", "e4m3fn_to_f32 (every byte)", "e8m0_to_f32 (every byte)"]
)


def test_microscaling_helpers_match_the_ptx_models(tmp_path):
    cxx = find_cxx()
    if cxx is None:
        pytest.skip("no C++ compiler (CXX, or c++ / g++ / clang++ on PATH)")
    exe = tmp_path / "mx_math"
    build = subprocess.run(
        [cxx, "-O2", "-std=c++17", "-pthread", f"-I{ROOT / 'csrc'}", str(SOURCE), "-o", str(exe)],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    run = subprocess.run([str(exe), "--stride", str(STRIDE)], capture_output=True, text=True, timeout=600)
    counts = {
        m.group(1): (int(m.group(2)), int(m.group(3)))
        for m in re.finditer(r"^(.+?): (\d+) mismatches in (\d+) inputs", run.stdout, re.MULTILINE)
    }
    assert sorted(counts) == sorted(FUNCTIONS), run.stdout
    for name, (bad, checked) in counts.items():
        assert checked > 0, name
        assert bad == 0, f"{name}: {bad} mismatches\n{run.stdout}"
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.rstrip().endswith("mx math: exact"), run.stdout
